"""The task contract, and step-indexed batch streams.

A task turns tokenized examples into training batches, computes the loss, evaluates and
generates. Batches are a pure function of (step, micro-step, process rank), so a resumed run
replays exactly the data the uninterrupted run would have seen, on any number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .segments import TokenSet

if TYPE_CHECKING:
    from .pipeline import Pipeline


@dataclass(frozen=True)
class Slice:
    """Which part of the global batch this process draws: micro-step `micro` of optimizer step
    `step`, examples [rank * size, (rank + 1) * size) of `global_size`."""

    step: int
    micro: int
    rank: int
    size: int
    global_size: int
    accum: int = 1


class BatchStream(Protocol):
    def batch(self, where: Slice) -> TokenSet: ...


@runtime_checkable
class Task(Protocol):
    """What a task plugin provides (class with a `Config` dataclass; ``cls(config)``)."""

    def setup(self, pipeline: Pipeline) -> None:
        """Bind to the pipeline (tokenizers, source); called before `outputs`/`build_head`."""

    def outputs(self) -> tuple[str, ...]:
        """Modalities whose output head the loss uses."""

    def build_head(self, d_model: int) -> nn.Module | None:
        """Extra trainable modules (a classifier ...), or None."""

    def batches(self, split: str, train: bool) -> BatchStream:
        """Step-indexed batches of a split (train=True: augmentation and target shuffling)."""

    def loss(self, model, head, batch: TokenSet) -> tuple[Tensor, dict]:
        """(scalar loss, stats) for a batch; stats may hold "tokens" (counted for tokens/s)."""

    def evaluate(self, pipeline: Pipeline, split: str, limit: int | None = None) -> dict:
        """Metrics on a split (the runner adds val_loss itself)."""


def _generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash(tuple(keys)) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


class EpochBatches:
    """Map-style data: epochs of a seeded permutation; global example k of step s is
    ``perm_epoch[(s * accum * global_size + micro * global_size + k) % n]``."""

    def __init__(self, items: Sequence[Any], collate: Callable[[list[Any], torch.Generator], TokenSet], seed: int, shuffle: bool = True):
        if len(items) == 0:
            raise ValueError("no examples in this split")
        self.items, self.collate, self.seed, self.shuffle = items, collate, seed, shuffle
        self._perm: tuple[int, Tensor] | None = None

    def perm(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            n = len(self.items)
            p = torch.randperm(n, generator=_generator(self.seed, epoch)) if self.shuffle else torch.arange(n)
            self._perm = (epoch, p)
        return self._perm[1]

    def indices(self, where: Slice) -> list[int]:
        n = len(self.items)
        start = (where.step * where.accum + where.micro) * where.global_size + where.rank * where.size
        return [int(self.perm(k // n)[k % n]) for k in range(start, start + where.size)]

    def batch(self, where: Slice) -> TokenSet:
        g = _generator(self.seed, where.step, where.micro, where.rank, 1)
        return self.collate([self.items[i] for i in self.indices(where)], g)


def random_generator(*keys: int) -> torch.Generator:
    """A generator seeded by a tuple of integers (step, micro, rank ...)."""
    return _generator(*keys)


def choose_modality(pipeline: Pipeline, configured: str, role: str = "input") -> str:
    """The modality a task works on: `configured` (its `[task] modality`), or the recipe's only
    tokenizer; a one-line error names what exists."""
    from .errors import UserError

    mods = list(pipeline.tokenizers)
    if configured and configured not in pipeline.tokenizers:
        raise UserError(f"[task] modality: no tokenizer for {configured!r} (have: {', '.join(mods)})")
    if not configured and len(mods) > 1:
        raise UserError(f"[task] modality: the recipe has several tokenizers ({', '.join(mods)}); name the {role}")
    return configured or mods[0]
