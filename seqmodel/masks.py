"""Attention-mask patterns as values.

A pattern is a predicate over a (query token, key token) pair that may read each token's index in
the set, segment number, document id, time coordinate and modality -- the FlexAttention
``mask_mod`` convention. The same predicate builds a dense boolean mask for
``scaled_dot_product_attention`` (CPU and GPU), a FlexAttention ``mask_mod`` (CUDA) and, for
plain ``causal``, selects the ``is_causal=True`` fast path.

Grammar of the recipe strings (whitespace ignored)::

    expr    := term ("|" term)*
    term    := atom ("&" atom)*
    atom    := NAME [":" ARG] | "(" expr ")"

    full | causal | sliding_window:W | local:W | prefix[:N] | segment | modality:Q>K+K;Q>K

``sliding_window:W`` is causal and sees the W most recent tokens (itself included);
``local:W`` sees tokens at most W positions away on either side; ``prefix:N`` makes the first N
segments of an example bidirectional and the rest causal (N=1 by default); ``segment`` keeps
attention inside one document; ``modality:text>image+text`` lets queries of modality ``text`` see
only keys of modalities ``image`` and ``text`` (queries of unlisted modalities are unrestricted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from seqmodel.errors import UserError, shown

if TYPE_CHECKING:
    from torch import Tensor


class TokenView(NamedTuple):
    """Per-token metadata, as tensors that broadcast against each other."""

    index: Tensor
    segment: Tensor
    doc: Tensor
    time: Tensor
    modality: Tensor
    codes: dict  # modality name -> code used in `modality`


class Mask:
    """Base of all patterns: composable with ``&`` and ``|``."""

    def allowed(self, q: TokenView, k: TokenView) -> Tensor:
        raise NotImplementedError

    def __and__(self, other: Mask) -> Mask:
        return And((self, other))

    def __or__(self, other: Mask) -> Mask:
        return Or((self, other))

    def modality_names(self) -> frozenset[str]:
        """The modality names this pattern's rules mention."""
        return frozenset()


@dataclass(frozen=True)
class Full(Mask):
    def allowed(self, q, k):
        return (q.index >= 0) & (k.index >= 0)

    def __str__(self):
        return "full"


@dataclass(frozen=True)
class Causal(Mask):
    def allowed(self, q, k):
        return k.index <= q.index

    def __str__(self):
        return "causal"


@dataclass(frozen=True)
class SlidingWindow(Mask):
    window: int

    def allowed(self, q, k):
        return (k.index <= q.index) & (q.index - k.index < self.window)

    def __str__(self):
        return f"sliding_window:{self.window}"


@dataclass(frozen=True)
class Local(Mask):
    window: int

    def allowed(self, q, k):
        return (q.index - k.index).abs() <= self.window

    def __str__(self):
        return f"local:{self.window}"


@dataclass(frozen=True)
class Prefix(Mask):
    segments: int = 1

    def allowed(self, q, k):
        return (k.index <= q.index) | ((q.segment < self.segments) & (k.segment < self.segments))

    def __str__(self):
        return "prefix" if self.segments == 1 else f"prefix:{self.segments}"


@dataclass(frozen=True)
class SameSegment(Mask):
    def allowed(self, q, k):
        return q.doc == k.doc

    def __str__(self):
        return "segment"


@dataclass(frozen=True)
class ModalityRule(Mask):
    rules: tuple[tuple[str, tuple[str, ...]], ...]  # (query modality, visible key modalities)

    def allowed(self, q, k):
        ok = (q.index >= 0) & (k.index >= 0)
        for query, keys in self.rules:
            qc = q.codes.get(query, -2)
            seen = ok & False
            for key in keys:
                seen = seen | (k.modality == k.codes.get(key, -2))
            ok = ok & ((q.modality != qc) | seen)
        return ok

    def __str__(self):
        return "modality:" + ";".join(f"{q}>{'+'.join(ks)}" for q, ks in self.rules)

    def modality_names(self) -> frozenset[str]:
        return frozenset(name for q, ks in self.rules for name in (q, *ks))


@dataclass(frozen=True)
class And(Mask):
    parts: tuple[Mask, ...]

    def modality_names(self) -> frozenset[str]:
        return frozenset().union(*(p.modality_names() for p in self.parts))

    def allowed(self, q, k):
        out = self.parts[0].allowed(q, k)
        for p in self.parts[1:]:
            out = out & p.allowed(q, k)
        return out

    def __str__(self):
        return "&".join(f"({p})" if isinstance(p, Or) else str(p) for p in self.parts)


@dataclass(frozen=True)
class Or(Mask):
    parts: tuple[Mask, ...]

    def modality_names(self) -> frozenset[str]:
        return frozenset().union(*(p.modality_names() for p in self.parts))

    def allowed(self, q, k):
        out = self.parts[0].allowed(q, k)
        for p in self.parts[1:]:
            out = out | p.allowed(q, k)
        return out

    def __str__(self):
        return "|".join(str(p) for p in self.parts)


_NAME = re.compile(r"[a-z_]+")


def _int_arg(name: str, arg: str | None, default: int | None = None) -> int:
    if arg is None and default is not None:
        return default
    if arg is None or not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"{name} needs a positive integer, as in {name}:{default or 64}")
    return int(arg)


def _modality_rule(arg: str | None) -> ModalityRule:
    if not arg:
        raise ValueError("modality needs rules, as in modality:text>image+text")
    rules = []
    for part in arg.split(";"):
        query, sep, keys = part.partition(">")
        names = [query, *keys.split("+")]
        if not sep or not all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names):
            raise ValueError(f"bad modality rule {shown(part)}: expected QUERY>KEY+KEY")
        rules.append((query, tuple(keys.split("+"))))
    return ModalityRule(tuple(rules))


_ATOMS = {
    "full": lambda a: Full(),
    "causal": lambda a: Causal(),
    "sliding_window": lambda a: SlidingWindow(_int_arg("sliding_window", a)),
    "local": lambda a: Local(_int_arg("local", a)),
    "prefix": lambda a: Prefix(_int_arg("prefix", a, 1)),
    "segment": lambda a: SameSegment(),
    "modality": _modality_rule,
}


class _Parser:
    DEEPEST = 64  # nested parentheses; deeper would overflow Python's stack

    def __init__(self, text: str):
        self.tokens = re.findall(r"\(|\)|&|\||[^()&|]+", text.replace(" ", ""))
        self.i = self.depth = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def expr(self) -> Mask:
        parts = [self.term()]
        while self.peek() == "|":
            self.take()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def term(self) -> Mask:
        parts = [self.atom()]
        while self.peek() == "&":
            self.take()
            parts.append(self.atom())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def atom(self) -> Mask:
        tok = self.take()
        if tok == "(":
            self.depth += 1
            if self.depth > self.DEEPEST:
                raise ValueError(f"parentheses nest more than {self.DEEPEST} deep")
            inner = self.expr()
            self.depth -= 1
            if self.take() != ")":
                raise ValueError("missing ')'")
            return inner
        if tok is None or tok in ")&|":
            raise ValueError(f"expected a pattern name, got {shown(tok or 'end of text')}")
        name, _, arg = tok.partition(":")
        if name not in _ATOMS:
            raise ValueError(f"unknown pattern {shown(name)} (known: {', '.join(_ATOMS)})")
        return _ATOMS[name](arg or None)


def parse_mask(text: str, where: str = "mask") -> Mask:
    """Parse a recipe mask string; a bad one raises a one-line `UserError` naming `where`."""
    prefix = f"{where}: " if where else ""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{prefix}expected a mask pattern such as 'causal', got {shown(text)}")
    try:
        parser = _Parser(text)
        mask = parser.expr()
        if parser.peek() is not None:
            raise ValueError(f"unexpected {shown(parser.peek())}")
        return mask
    except ValueError as err:
        raise UserError(f"{prefix}bad mask pattern {shown(text)}: {err}") from None


def is_plain_causal(mask: Mask) -> bool:
    return isinstance(mask, Causal)


def is_full(mask: Mask) -> bool:
    return isinstance(mask, Full)


def dense_mask(mask: Mask, q: TokenView, k: TokenView, k_valid: Tensor, q_valid: Tensor | None = None) -> Tensor:
    """Boolean mask (B, 1, Lq, Lk), True where a query may attend to a key.

    `q`/`k` hold (B, Lq) and (B, Lk) tensors. Padded keys are never visible; a padded query row
    may also see key 0, so that softmax never meets an all-masked row (its output is ignored).
    """
    qv = TokenView(*(t[:, :, None] for t in q[:5]), q.codes)
    kv = TokenView(*(t[:, None, :] for t in k[:5]), k.codes)
    allowed = mask.allowed(qv, kv) & k_valid[:, None, :]
    if q_valid is not None:
        allowed = allowed | (~q_valid[:, :, None] & (kv.index == 0))
    return allowed[:, None]


def flex_mask_mod(mask: Mask, q: TokenView, k: TokenView, k_valid: Tensor):
    """The same predicate as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx)``."""

    def mask_mod(b, h, qi, ki):
        qv = TokenView(*(t[b, qi] for t in q[:5]), q.codes)
        kv = TokenView(*(t[b, ki] for t in k[:5]), k.codes)
        return mask.allowed(qv, kv) & k_valid[b, ki]

    return mask_mod


@dataclass(frozen=True)
class MaskSchedule:
    """One mask per layer, cycling: ``["local:16", "full"]`` alternates local and global layers."""

    masks: tuple[Mask, ...]

    def for_layer(self, i: int) -> Mask:
        return self.masks[i % len(self.masks)]

    @classmethod
    def parse(cls, mask: str, layer_masks: list[str] | tuple[str, ...] = (), where: str = "model") -> MaskSchedule:
        if layer_masks:
            return cls(tuple(parse_mask(m, f"{where}.layer_masks[{i}]") for i, m in enumerate(layer_masks)))
        return cls((parse_mask(mask, f"{where}.mask"),))


def layout_view(parts: list[tuple[str, int]]) -> TokenView:
    """Metadata of one example whose segments are `parts` ((modality, length) in token order),
    laid out as `collate` lays them: segment and document = the part's number, time = the index
    inside the part. Tensors are (L,)."""
    import torch  # here, not at the top: recipes parse masks (`parse_mask`) without importing torch

    codes = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in parts))}
    segment = torch.cat([torch.full((n,), s, dtype=torch.long) for s, (_, n) in enumerate(parts)])
    time = torch.cat([torch.arange(n) for _, n in parts])
    modality = torch.cat([torch.full((n,), codes[m], dtype=torch.long) for m, n in parts])
    return TokenView(torch.arange(len(segment)), segment, segment, time, modality, codes)


def future_leak(schedule: MaskSchedule, view: TokenView, predicted: Tensor) -> Mask | None:
    """The first mask of `schedule` under which a `predicted` token ((L,) bool: a token whose
    output predicts the next one) may attend to a later token of `view`, or None.

    Next-token training under such a mask sees the very token it predicts, and incremental
    decoding with the KV cache cannot reproduce it (a cached key never sees later tokens)."""
    q = TokenView(*(t[:, None] for t in view[:5]), view.codes)
    k = TokenView(*(t[None, :] for t in view[:5]), view.codes)
    later = k.index > q.index
    for mask in schedule.masks:
        if (mask.allowed(q, k) & later & predicted[:, None]).any():
            return mask
    return None


def require_no_future(model_cfg, view: TokenView, predicted: Tensor, who: str) -> None:
    """A one-line error when the `[model]` mask schedule lets a predicted token see later ones.

    Args:
        model_cfg: the `[model]` config (its `mask` and `layer_masks`).
        view: the metadata of a typical example (`layout_view`).
        predicted: which of its tokens predict the next one.
        who: the task, for the message ("the lm task").
    """
    schedule = MaskSchedule.parse(model_cfg.mask, model_cfg.layer_masks)
    leak = future_leak(schedule, view, predicted)
    if leak is not None:
        key = "layer_masks" if model_cfg.layer_masks else "mask"
        hint = "" if is_full(leak) else f", or restrict it: \"causal & ({leak})\""
        raise UserError(f"[model] {key}: {who} predicts each token from the ones before it, but {str(leak)!r} lets a "
                        f"token see later ones (what it predicts); use \"causal\"{hint}")
