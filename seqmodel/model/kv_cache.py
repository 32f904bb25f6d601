"""The KV cache of incremental decoding (`seqmodel.generate`): per-layer keys and values,
preallocated, and the metadata the masks read."""

from __future__ import annotations

import torch
from torch import Tensor


class LayerCache:
    """Keys and values of one attention layer, preallocated for `capacity` tokens."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor, start: int, capacity: int) -> tuple[Tensor, Tensor]:
        n = k.shape[2]
        if self.k is None:
            self.k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            self.v = torch.empty_like(self.k)
        self.k[:, :, start : start + n] = k
        self.v[:, :, start : start + n] = v
        return self.k[:, :, : start + n], self.v[:, :, : start + n]


class DecodeCache:
    """Everything incremental decoding keeps between steps: per-layer K/V, cross K/V (computed
    once), and the metadata of the tokens seen so far (the masks read it)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.self_kv: dict[int, LayerCache] = {}
        self.cross_kv: dict[int, tuple[Tensor, Tensor]] = {}
        self.meta: list[Tensor] | None = None  # index, segment, doc, time, modality, valid (B, length)
        self.codes: dict | None = None
        self.memory: tuple[Tensor, Tensor] | None = None  # encoder output and its valid mask

    def layer(self, i: int) -> LayerCache:
        return self.self_kv.setdefault(i, LayerCache())

    def nbytes(self) -> int:
        """Bytes of the cached keys and values: self-attention (allocated for `capacity` tokens)
        and cross-attention (the encoder's length)."""
        kv = [t for c in self.self_kv.values() for t in (c.k, c.v) if t is not None]
        kv += [t for pair in self.cross_kv.values() for t in pair]
        return sum(t.numel() * t.element_size() for t in kv)
