"""The plugin contracts: small Protocols a third party implements without inheriting anything.

Every plugin class has a `Config` dataclass (its recipe table, one docstring'd field each) and is
registered under an entry-point group (see `seqmodel.registry`):

- ``seqmodel.tokenizers``: ``cls(config, modality)`` -> `Tokenizer`
- ``seqmodel.sources``: ``cls(config)`` -> `Source`
- ``seqmodel.tasks``: ``cls(config)`` -> `Task` (see `seqmodel.task`)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .segments import Segment

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


@runtime_checkable
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


@runtime_checkable
class Source(Protocol):
    """Yields raw examples (dicts of fields) for the splits "train", "val" and "test"."""

    fields: tuple[str, ...]

    def split(self, name: str) -> Sequence[dict] | Iterable[dict]: ...

    def identity(self) -> dict: ...
