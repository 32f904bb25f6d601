"""Autoregressive generation of a discrete modality, with or without the KV cache.

Both paths share one windowing rule, so they compute the same thing: when the set would outgrow
the model's context, the oldest half of the generated segment is dropped and its positions are
renumbered from 0 (the cached path then re-fills its cache from the cropped window). Greedy
decoding is therefore token-for-token identical with and without the cache. That needs a decoder
mask under which no generated token sees a later one; `generate` refuses any other (`check_exact`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from seqmodel.errors import UserError
from seqmodel.masks import future_leak, layout_view
from seqmodel.model.config import SampleConfig
from seqmodel.model.transformer import DecodeCache, Transformer
from seqmodel.segments import Segment, TokenSet, collate


def choose_token(logits: Tensor, cfg: SampleConfig, generator: torch.Generator | None = None) -> int:
    """Pick the next id from logits (V,) by greedy, temperature, top-k and top-p rules."""
    if cfg.greedy or cfg.temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.numel():
        kth = torch.topk(logits, cfg.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(0) - sorted_p > cfg.top_p
        probs = probs.index_fill(0, order[drop], 0.0)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def _window(prefix: list[Segment], capacity: int) -> list[Segment]:
    """Apply the context rule to the last (generated) segment."""
    other = sum(len(s) for s in prefix[:-1])
    last = prefix[-1]
    budget = capacity - other
    if budget < 2:
        raise ValueError(f"the prompt leaves no room to generate within the model context ({capacity})")
    if len(last) <= budget:
        return prefix
    kept = last.slice(len(last) - budget // 2, len(last))
    kept.positions = kept.positions - kept.positions[:1]
    return [*prefix[:-1], kept]


def _as_set(segments: list[Segment], device, first_segment: int = 0) -> TokenSet:
    ts = collate([segments]).to(device)
    if first_segment:
        ts.segment = ts.segment + first_segment
        ts.doc = ts.doc + first_segment
    return ts


def _append(seg: Segment, token: int) -> Segment:
    pos = seg.positions
    nxt = (pos[-1:] + 1) if len(seg) else torch.zeros_like(pos[:1])
    return replace(seg, ids=torch.cat([seg.ids, seg.ids.new_tensor([token])]), positions=torch.cat([pos, nxt]),
                   targets=None, loss_mask=None, doc=None)


def check_exact(model: Transformer, prefix: list[Segment]) -> None:
    """Refuse a decoder mask under which a generated token would see later ones: next-token
    sampling never has them, and the KV cache could not reproduce the attention it implies."""
    layout = [(s.modality, max(len(s), 1)) for s in prefix[:-1]] + [(prefix[-1].modality, model.cfg.context)]
    view = layout_view(layout)
    leak = future_leak(model.masks, view, view.segment == len(prefix) - 1)
    if leak is not None:
        raise UserError(f"generate: the decoder's mask {str(leak)!r} lets a generated token see later ones, which "
                        "token-by-token generation cannot give it (with or without the KV cache); train with a "
                        "mask that is causal over the generated segment")


@torch.no_grad()
def generate(
    model: Transformer,
    prefix: list[Segment],
    max_new_tokens: int,
    choose: Callable[[Tensor], int],
    context: list[Segment] | None = None,
    use_cache: bool = True,
    stop: Callable[[int], bool] | None = None,
    on_logits: Callable[[Tensor], None] | None = None,
) -> list[int]:
    """Extend the last segment of `prefix` (a discrete modality) by up to `max_new_tokens` ids.

    Args:
        model: the transformer (decoder or encoder-decoder), in eval mode.
        prefix: the example's segments; the last one is the one generated.
        choose: maps the next-token logits (V,) to an id (see `choose_token`).
        context: the encoder's input segments, for an encoder-decoder.
        use_cache: incremental decoding with the KV cache; False recomputes the window each step.
        stop: returns True for an id that ends generation (it is included in the output).
        on_logits: called with each step's logits (tests compare the two paths with it).
    """
    check_exact(model, prefix)
    device = next(model.parameters()).device
    name = prefix[-1].modality
    memory = model.encode(collate([context]).to(device)) if context else None
    capacity = model.cfg.context
    seg_no = len(prefix) - 1
    out: list[int] = []
    cache = None
    window = _window(prefix, capacity)
    for _ in range(max_new_tokens):
        if not use_cache or cache is None:
            cache = DecodeCache(capacity) if use_cache else None
            ts = _as_set(window, device)
        else:
            ts = _as_set([window[-1].slice(len(window[-1]) - 1, len(window[-1]))], device, seg_no)
        hidden = model.decode(ts, memory, cache)
        logits = model.output(name, hidden, ts)[0, -1]
        if on_logits is not None:
            on_logits(logits)
        token = choose(logits)
        out.append(token)
        if stop is not None and stop(token):
            break
        grown = [*window[:-1], _append(window[-1], token)]
        window = _window(grown, capacity)
        if window is not grown:
            cache = None
    return out
