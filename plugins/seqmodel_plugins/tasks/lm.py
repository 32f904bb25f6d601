"""Next-token language modelling over one discrete modality (decoder-only).

Training draws random windows of `context + 1` tokens from the whole split, concatenated in
document order with the tokenizer's end-of-text id between documents (nanoGPT's sampling).
`evaluate` scores every token of a split once, in non-overlapping windows, and reports bits per
character so that tokenizers with different vocabularies compare directly (the characters are
the documents' own: an end-of-text separator is scored but counts no character).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from seqmodel.errors import UserError
from seqmodel.generate import SampleConfig, choose_token, generate
from seqmodel.segments import Segment, dense_set
from seqmodel.task import Slice, choose_modality, random_generator

SPLIT_SALT = {"train": 0, "val": 1, "test": 2}


@dataclass
class LMConfig:
    """`[task] kind = "lm"`."""

    modality: str = ""
    """The modality to model (default: the recipe's only tokenizer)."""


class RandomWindows:
    """Global batch of step s: `global_size` window starts drawn from a generator seeded by
    (seed, split, s, micro); each process takes its own slice."""

    def __init__(self, ids: torch.Tensor, context: int, seed: int, modality: str) -> None:
        if len(ids) <= context + 1:
            raise UserError(f"the split has {len(ids)} tokens, fewer than context + 2 = {context + 2}")
        self.ids, self.context, self.seed, self.modality = ids, context, seed, modality

    def starts(self, where: Slice) -> torch.Tensor:
        g = random_generator(self.seed, where.step, where.micro)
        every = torch.randint(len(self.ids) - self.context - 1, (where.global_size,), generator=g)
        return every[where.rank * where.size : (where.rank + 1) * where.size]

    def batch(self, where: Slice):
        rows = self.starts(where)[:, None] + torch.arange(self.context + 1)
        chunk = self.ids[rows]  # (B, T + 1)
        return dense_set(self.modality, ids=chunk[:, :-1], targets=chunk[:, 1:])


class LMTask:
    """See the module docstring."""

    Config = LMConfig

    def __init__(self, config: LMConfig) -> None:
        self.config = config
        self._ids: dict[str, torch.Tensor] = {}

    def setup(self, pipeline) -> None:
        self.pipe = pipeline
        self.modality = choose_modality(pipeline, self.config.modality, "one to model")
        self.tok = pipeline.tokenizers[self.modality]
        if not self.tok.spec().discrete:
            raise UserError(f"[task] lm needs a discrete tokenizer; {self.modality!r} is continuous")
        self.context = pipeline.recipe.model.context

    def outputs(self) -> tuple[str, ...]:
        return (self.modality,)

    def build_head(self, d_model: int):
        return None

    def text(self, split: str) -> str:
        return "".join(ex[self.pipe.fields[self.modality]] for ex in self.pipe.examples(split))

    def ids(self, split: str) -> torch.Tensor:
        """The split as one id stream, encoded once (end-of-text ids between documents)."""
        if split not in self._ids:
            field, eot = self.pipe.fields[self.modality], getattr(self.tok, "eot_id", None)
            parts = []
            for ex in self.pipe.examples(split):
                if parts and eot is not None:
                    parts.append(np.array([eot], dtype=np.int64))
                parts.append(np.asarray(self.tok.encode(ex[field]).ids, dtype=np.int64))
            self._ids[split] = torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.int64))
        return self._ids[split]

    def batches(self, split: str, train: bool) -> RandomWindows:
        return RandomWindows(self.ids(split), self.context, self.pipe.recipe.train.seed * 8 + SPLIT_SALT[split], self.modality)

    def loss(self, model, head, batch):
        hidden = model(batch)
        logits = model.output(self.modality, hidden, batch)
        targets = batch.inputs[self.modality].targets
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return loss, {"tokens": targets.numel()}

    # -- evaluation and generation -------------------------------------------------------------
    def _core(self):
        return self.pipe.module.core.eval()

    @torch.no_grad()
    def evaluate(self, pipeline, split: str, limit: int | None = None, batch_size: int = 32, **options) -> dict:
        """Loss and bits per character over every token of `split` (or the first `limit` windows)."""
        core, T = self._core(), self.context
        ids = self.ids(split)
        n_windows = (len(ids) - 1) // T if limit is None else min(limit, (len(ids) - 1) // T)
        if n_windows < 1:
            raise UserError(f"split {split!r} is shorter than one context window ({T + 1} tokens)")
        device = next(core.parameters()).device
        total = 0.0
        for i in range(0, n_windows, batch_size):
            rows = (torch.arange(i, min(n_windows, i + batch_size)) * T)[:, None] + torch.arange(T + 1)
            chunk = ids[rows].to(device)
            ts = dense_set(self.modality, ids=chunk[:, :-1])
            logits = core.output(self.modality, core(ts), ts).float()
            total += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
        tokens = n_windows * T
        scored, eot = ids[1 : tokens + 1], getattr(self.tok, "eot_id", None)
        text_ids = scored if eot is None else scored[scored != eot]  # separators are predicted, not characters
        chars = len(self.tok.decode(Segment(self.modality, ids=text_ids)))
        return {"loss": total / tokens, "bits_per_char": total / math.log(2) / max(chars, 1),
                "tokens": tokens, "chars": chars}

    def encode_prompt(self, text: str) -> torch.Tensor:
        ids = self.tok.encode(text).ids
        if len(ids) == 0:
            raise UserError("the prompt is empty after tokenization; give at least one character")
        return ids

    def generate(self, pipeline, prompt: str, cfg: SampleConfig, use_cache: bool = True) -> str:
        g = torch.Generator().manual_seed(cfg.seed)
        ids = self.encode_prompt(prompt)
        out = generate(self._core(), [Segment(self.modality, ids=ids)], cfg.max_new_tokens,
                       lambda logits: choose_token(logits, cfg, g), use_cache=use_cache)
        return self.tok.decode(Segment(self.modality, ids=torch.cat([ids, torch.tensor(out, dtype=torch.long)])))

    @torch.no_grad()
    def score(self, pipeline, text: str) -> dict:
        """Log-probability (nats) of every token given the ones before it; the first token has
        no context and is not scored. Windows sit on a fixed grid, so scores are causal."""
        ids = self.encode_prompt(text)
        core, T = self._core(), self.context
        n, half = len(ids), max(1, self.context // 2)
        logprobs: list[float | None] = [None]
        end, done = T, 1
        while done < n:
            start = end - T
            window = ids[start : min(end, n)][None]
            ts = dense_set(self.modality, ids=window)
            lp = torch.log_softmax(core.output(self.modality, core(ts), ts).float()[0], -1)
            for j in range(done, min(end, n)):
                logprobs.append(float(lp[j - 1 - start, ids[j]]))
            done, end = min(end, n), end + half
        pieces = [self.tok.piece(i) if hasattr(self.tok, "piece") else self.tok.decode(Segment(self.modality, ids=ids[k : k + 1]))
                  for k, i in enumerate(ids.tolist())]
        scored = sum(lp for lp in logprobs if lp is not None)
        chars = len(self.tok.decode(Segment(self.modality, ids=ids[1:])))
        return {"tokens": [{"token": p, "logprob": lp} for p, lp in zip(pieces, logprobs)],
                "bits_per_char": (-scored / math.log(2) / chars) if chars else None}

    def sample(self, pipeline, cfg: SampleConfig) -> list[str]:
        out = []
        for k in range(cfg.num_samples):
            out.append(self.generate(pipeline, cfg.prompt, SampleConfig(**{**cfg.__dict__, "seed": cfg.seed + k})))
        return out
