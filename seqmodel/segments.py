"""Segments (one modality's tokens of one example) and TokenSets (a collated batch of them).

A tokenizer plugin turns one field of an example into a `Segment`. An example is a list of
segments; `collate` concatenates each example's segments in order into one *set* of tokens and
pads the batch. The model never sees modality-specific structure: only per-modality inputs, the
slot each token occupies in the set, and per-token metadata the masks read (index, segment,
document, time, modality).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass
class Segment:
    """The tokens of one modality for one example.

    Exactly one of `ids` (discrete) and `values` (continuous) is set.
    """

    modality: str
    ids: Tensor | None = None  # (T,) int64
    values: Tensor | None = None  # (T, F) float32
    positions: Tensor | None = None  # (T,) or (T, P) int64; defaults to arange(T)
    targets: Tensor | None = None  # (T,) int64 or (T, F) float; what each token should predict
    loss_mask: Tensor | None = None  # (T,) bool; which targets count in the loss
    doc: Tensor | None = None  # (T,) int64 document ids, read by the `segment` mask

    def __post_init__(self) -> None:
        if (self.ids is None) == (self.values is None):
            raise ValueError(f"segment {self.modality!r}: give exactly one of ids or values")
        if self.ids is not None and self.ids.dim() != 1:
            raise ValueError(f"segment {self.modality!r}: ids must be 1-D, got {tuple(self.ids.shape)}")
        if self.values is not None and self.values.dim() != 2:
            raise ValueError(f"segment {self.modality!r}: values must be (T, F), got {tuple(self.values.shape)}")
        if self.positions is None:
            self.positions = torch.arange(len(self))
        if self.positions.shape[0] != len(self):
            raise ValueError(f"segment {self.modality!r}: {self.positions.shape[0]} positions for {len(self)} tokens")

    def __len__(self) -> int:
        data = self.ids if self.ids is not None else self.values
        return int(data.shape[0])

    @property
    def discrete(self) -> bool:
        return self.ids is not None

    def slice(self, start: int, stop: int) -> Segment:
        """Tokens [start, stop) of this segment, every per-token field sliced alike."""
        cut = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "modality"}
        cut = {k: (v[start:stop] if isinstance(v, Tensor) else v) for k, v in cut.items()}
        return Segment(self.modality, **cut)


@dataclass
class ModalityInputs:
    """All tokens of one modality in a batch, padded to the longest example."""

    slot: Tensor  # (B, Tm) int64: where each token sits in the set (0 for padding)
    valid: Tensor  # (B, Tm) bool
    positions: Tensor  # (B, Tm, P) int64
    ids: Tensor | None = None  # (B, Tm)
    values: Tensor | None = None  # (B, Tm, F)
    targets: Tensor | None = None  # (B, Tm) or (B, Tm, F)
    loss_mask: Tensor | None = None  # (B, Tm) bool
    dense: bool = False  # True when this modality fills the whole set in order, unpadded


@dataclass
class TokenSet:
    """A padded batch of token sets, with the per-token metadata masks are written against.

    An encoder-decoder batch is the decoder's set with the encoder's as its `context`."""

    inputs: dict[str, ModalityInputs]
    modalities: tuple[str, ...]  # code -> modality name, for `modality` below
    valid: Tensor  # (B, L) bool key-padding mask
    modality: Tensor  # (B, L) int64 code into `modalities`, -1 on padding
    segment: Tensor  # (B, L) int64: which segment of the example (0, 1, ...)
    doc: Tensor  # (B, L) int64 document id
    time: Tensor  # (B, L) int64 first position coordinate (index, timestep, patch row ...)
    extras: dict = field(default_factory=dict)  # task-specific tensors (labels ...)
    context: TokenSet | None = None  # the encoder's set, for a model with cross-attention
    member: str = ""  # the mixture member this batch is from ("" in a single-task run)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.valid.shape)

    def to(self, device: torch.device | str) -> TokenSet:
        def move(x):
            if isinstance(x, Tensor):
                return x.to(device, non_blocking=True)
            if isinstance(x, (ModalityInputs, TokenSet)):
                return replace(x, **{f.name: move(getattr(x, f.name)) for f in fields(x)})
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})


def _pad(tensors: list[Tensor], length: int, value=0) -> Tensor:
    out = tensors[0].new_full((len(tensors), length, *tensors[0].shape[1:]), value)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def _positions_2d(p: Tensor) -> Tensor:
    return p.unsqueeze(-1) if p.dim() == 1 else p


def collate(examples: list[list[Segment]], extras: dict | None = None) -> TokenSet:
    """Concatenate each example's segments (in the given order) into one set and pad the batch.

    Args:
        examples: one list of segments per example; the list order is the token order.
        extras: task-specific batched tensors carried along unchanged (labels ...).
    """
    if not examples or any(len(ex) == 0 for ex in examples):
        raise ValueError("collate needs at least one example, each with at least one segment")
    B = len(examples)
    lengths = [sum(len(s) for s in ex) for ex in examples]
    L = max(lengths)
    names = tuple(dict.fromkeys(s.modality for ex in examples for s in ex))
    code = {m: i for i, m in enumerate(names)}

    valid = torch.zeros(B, L, dtype=torch.bool)
    modality = torch.full((B, L), -1, dtype=torch.long)
    segment = torch.zeros(B, L, dtype=torch.long)
    doc = torch.zeros(B, L, dtype=torch.long)
    time = torch.zeros(B, L, dtype=torch.long)
    per_mod: dict[str, list[list[tuple[int, Segment]]]] = {m: [[] for _ in range(B)] for m in names}
    for b, ex in enumerate(examples):
        start = 0
        for si, seg in enumerate(ex):
            stop = start + len(seg)
            valid[b, start:stop] = True
            modality[b, start:stop] = code[seg.modality]
            segment[b, start:stop] = si
            doc[b, start:stop] = seg.doc if seg.doc is not None else si
            time[b, start:stop] = _positions_2d(seg.positions)[:, 0]
            per_mod[seg.modality][b].append((start, seg))
            start = stop

    inputs = {m: _collate_modality(per_mod[m], L) for m in names}
    return TokenSet(inputs, names, valid, modality, segment, doc, time, extras or {})


def _collate_modality(rows: list[list[tuple[int, Segment]]], L: int) -> ModalityInputs:
    def cat(key: str, row: list[tuple[int, Segment]]):
        parts = [getattr(s, key) for _, s in row]
        if any(p is None for p in parts):
            return None
        return torch.cat(parts) if parts else None

    first = next(s for row in rows for _, s in row)
    Tm = max(sum(len(s) for _, s in row) for row in rows)
    slots, valids, pos, data, tgt, lmask = [], [], [], [], [], []
    for row in rows:
        slots.append(torch.cat([torch.arange(start, start + len(s)) for start, s in row]) if row else torch.zeros(0, dtype=torch.long))
        valids.append(torch.ones(slots[-1].shape[0], dtype=torch.bool))
        pos.append(torch.cat([_positions_2d(s.positions) for _, s in row]) if row else torch.zeros(0, _positions_2d(first.positions).shape[1], dtype=torch.long))
        data.append(cat("ids" if first.discrete else "values", row))
        tgt.append(cat("targets", row))
        lmask.append(cat("loss_mask", row))
    empty = [i for i, d in enumerate(data) if d is None]
    for i in empty:  # an example without this modality
        shape = (0,) if first.discrete else (0, first.values.shape[1])
        data[i] = torch.zeros(shape, dtype=(first.ids if first.discrete else first.values).dtype)
    out = ModalityInputs(slot=_pad(slots, Tm), valid=_pad(valids, Tm, False), positions=_pad(pos, Tm))
    batched = _pad(data, Tm)
    if first.discrete:
        out.ids = batched
    else:
        out.values = batched
    if all(t is not None for t in tgt) and tgt:
        out.targets = _pad(tgt, Tm, -100 if tgt[0].dtype == torch.long else 0)
    if any(t is not None for t in tgt) and out.targets is not None:
        out.loss_mask = _pad([m if m is not None else torch.ones(len(t), dtype=torch.bool) for m, t in zip(lmask, tgt)], Tm, False)
    out.dense = Tm == L and bool(out.valid.all()) and bool((out.slot == torch.arange(L)).all())
    return out


def dense_set(modality: str, ids: Tensor | None = None, values: Tensor | None = None, targets: Tensor | None = None) -> TokenSet:
    """A batch in which every example is one unpadded segment of 1-D positions 0..T-1.

    The fast path for language modelling: the same TokenSet `collate` would build, without the
    per-example work.
    """
    data = ids if ids is not None else values
    B, T = data.shape[:2]
    index = torch.arange(T).expand(B, T)
    zeros = torch.zeros(B, T, dtype=torch.long)
    inp = ModalityInputs(slot=index, valid=torch.ones(B, T, dtype=torch.bool), positions=index.unsqueeze(-1),
                         ids=ids, values=values, targets=targets, dense=True)
    return TokenSet({modality: inp}, (modality,), inp.valid, zeros, zeros, zeros, index)
