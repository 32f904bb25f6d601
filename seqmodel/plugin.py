"""The plugin contracts: small Protocols a third party implements without inheriting anything.

Every plugin class has a `Config` dataclass (its recipe table, one docstring'd field each) and is
registered under an entry-point group (see `seqmodel.registry`):

- ``seqmodel.tokenizers``: ``cls(config, modality)`` -> `Tokenizer`
- ``seqmodel.sources``: ``cls(config)`` -> `Source`
- ``seqmodel.tasks``: ``cls(config)`` -> `Task` (see `seqmodel.task`)

Optional abilities are declared, not discovered: a class lists them in ``capabilities`` (a tuple of
names from `TOKENIZER_CAPABILITIES`, `SOURCE_CAPABILITIES` or `seqmodel.task.CAPABILITIES`), the
registry checks at load that the members each one needs are there, and the core reads only the
declaration (`declared`). Names the core does not know are left to the plugins that agree on them
(the `decision` task and the `sar` tokenizer share "steps").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from seqmodel.capabilities import (  # noqa: F401 (plugins import them from here)
    SOURCE_CAPABILITIES,
    SPLITS,
    TOKENIZER_CAPABILITIES,
    check_split,
    declared,
)
from seqmodel.segments import Segment

POSITION_KINDS = ("learned", "2d", "timestep", "rotary", "none")


@dataclass(frozen=True)
class ModalitySpec:
    """What the model needs to know about one modality's tokens.

    Attributes:
        name: the modality name (a key of the learned modality embedding).
        vocab_size: for discrete tokens, the number of ids (input table and output head size).
        width: for continuous tokens, the feature width F of `Segment.values`.
        position: how positions are encoded: "learned" (1-D table), "2d" (factorised row/column
            tables), "timestep" (1-D table of timesteps), "rotary" (rotary q/k on the first
            coordinate) or "none".
        max_positions: size of each position table, one per coordinate (e.g. (rows, cols));
            empty means the model's context length.
    """

    name: str
    vocab_size: int | None = None
    width: int | None = None
    position: str = "learned"
    max_positions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if (self.vocab_size is None) == (self.width is None):
            raise ValueError(f"modality {self.name!r}: give exactly one of vocab_size or width")
        if self.position not in POSITION_KINDS:
            raise ValueError(f"modality {self.name!r}: position must be one of {POSITION_KINDS}")

    @property
    def discrete(self) -> bool:
        return self.vocab_size is not None

    def position_tables(self, context: int) -> tuple[int, ...]:
        """Rows of each learned position table the model gives this modality, one per coordinate:
        one 1-D table for "learned" and "timestep", row and column tables for "2d", none for
        "rotary" and "none"; `max_positions` sizes them, else the model's `context`."""
        limits = self.max_positions or (context,)
        return {"learned": limits[:1], "timestep": limits[:1], "2d": limits[:2]}.get(self.position, ())


class Tokenizer(Protocol):
    """Turns one field of an example into a `Segment` and back.

    Lifecycle: constructed from its config and modality name; then either `fit` on the training
    split's field values (a new run) or `load` from a run directory (sample/eval/resume).
    `spec()` is valid after either.
    """

    modality: str

    def spec(self) -> ModalitySpec: ...

    def fit(self, values: Iterable[Any]) -> None: ...

    def encode(self, value: Any, *, train: bool = False) -> Segment: ...

    def decode(self, segment: Segment) -> Any: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


class Source(Protocol):
    """Yields raw examples (dicts of fields) for the splits "train", "val" and "test"."""

    fields: tuple[str, ...]

    def split(self, name: str) -> Sequence[dict] | Iterable[dict]: ...

    def identity(self) -> dict: ...


@dataclass(frozen=True)
class Parts:
    """A split's values of one field, each read in parts: what a source declaring "parts" gives,
    so that a value too long to hold (a 2 GB text file) never becomes one Python object.

    Joined, a document's parts are the value `split` would give; the documents come in the order
    of `split`. A source and a tokenizer that both declare "parts" agree on where a value may be
    cut: for text, only before a line break that follows a non-space character, where no text
    tokenizer of this project joins characters into one token. The tokenizer then encodes the
    parts (`encode_parts`) and fits on them as if they were the values.

    Attributes:
        documents: one iterable of parts per example.
        nbytes: the size of what is read, in bytes, when known (progress bars).
    """

    documents: Iterable[Iterable[Any]]
    nbytes: int | None = None


def separator_id(tokenizer: Any) -> int | None:
    """The id a tokenizer puts between documents of a stream (its "separator" capability), or None."""
    return tokenizer.eot_id if "separator" in declared(tokenizer) else None


# -- what a valid segment is ------------------------------------------------------------------
def segment_problem(seg: Any, spec: ModalitySpec, context: int | None = None) -> str | None:
    """What in `seg` breaks the contract of `spec`, or None. With `context`, positions of 1-D
    tables without `max_positions` must also fit the model's context."""
    if not isinstance(seg, Segment):
        return f"a {type(seg).__name__}, not a Segment"
    if seg.modality != spec.name:
        return f"segment modality {seg.modality!r} != spec().name {spec.name!r}"
    T = len(seg)
    if spec.discrete:
        if seg.ids is None or seg.ids.dtype != torch.int64 or seg.ids.dim() != 1:
            return f"a discrete modality needs ids int64 (T,), got {tensor_kind(seg.ids)}"
        if T and not (0 <= int(seg.ids.min()) and int(seg.ids.max()) < spec.vocab_size):
            return f"ids span [{int(seg.ids.min())}, {int(seg.ids.max())}], outside [0, vocab_size={spec.vocab_size})"
    else:
        if seg.values is None or seg.values.dtype != torch.float32 or tuple(seg.values.shape[1:]) != (spec.width,):
            return f"a continuous modality needs values float32 (T, {spec.width}), got {tensor_kind(seg.values)}"
        if not torch.isfinite(seg.values).all():
            return "values hold NaN or infinity"
    return positions_problem(seg.positions, T, spec, context) or _extras_problem(seg, T)


def positions_problem(pos: torch.Tensor, T: int, spec: ModalitySpec, context: int | None = None) -> str | None:
    """What is wrong with positions (T,) or (T, P) under `spec` (and the model's `context`), or None."""
    if pos.dtype != torch.int64 or pos.dim() not in (1, 2) or pos.shape[0] != T:
        return f"positions must be int64 ({T},) or ({T}, P), got {tensor_kind(pos)}"
    grid = pos[:, None] if pos.dim() == 1 else pos
    if spec.position == "2d" and grid.shape[1] < 2:
        return "2d positions need (T, 2) row/column coordinates"
    if T and int(grid.min()) < 0:
        return "positions must not be negative"
    for c, limit in enumerate(spec.max_positions[: grid.shape[1]]):
        if T and int(grid[:, c].max()) >= limit:
            return f"position coordinate {c} reaches {int(grid[:, c].max())}, but max_positions[{c}] = {limit}"
    if context and not spec.max_positions and spec.position in ("learned", "timestep") and T:
        if int(grid[:, 0].max()) >= context:
            return f"position {int(grid[:, 0].max())} is beyond the model's context ({context} positions)"
    return None


def _extras_problem(seg: Segment, T: int) -> str | None:
    if seg.targets is not None and seg.targets.shape[0] != T:
        return f"{seg.targets.shape[0]} targets for {T} tokens"
    if seg.loss_mask is not None and (seg.loss_mask.dtype != torch.bool or tuple(seg.loss_mask.shape) != (T,)):
        return f"loss_mask must be bool ({T},), got {tensor_kind(seg.loss_mask)}"
    return None


def tensor_kind(t) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"
