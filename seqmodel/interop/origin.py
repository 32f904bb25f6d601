"""A warm-start source in this framework's names: what `[train] init_from` takes from a run
directory, a checkpoint or another tool's model (`seqmodel.training.warm_start` reads it).

A source's tokenizer state is read either by the tokenizer plugin that wrote it (a seqmodel run:
`TokenizerState.kind`) or by any tokenizer plugin that declares a capability saying it reads
that format (`TokenizerState.capability`: "hf_tokenizer" for a HuggingFace ``tokenizer.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor


@dataclass(frozen=True)
class TokenizerState:
    """A saved tokenizer state: the directory a tokenizer plugin's `load` reads.

    Attributes:
        directory: what `load(directory)` is given.
        kind: the tokenizer plugin that wrote it, which alone can read it ("" when `capability` says who can).
        capability: a tokenizer capability whose plugins all read this state ("" when `kind` says who can).
        what: the state's format in words, for messages.
    """

    directory: Path
    kind: str = ""
    capability: str = ""
    what: str = ""


@dataclass
class Origin:
    """What a warm start takes from its source.

    Attributes:
        spec: the `init_from` string.
        model: the source's `[model]` table (the keys it sets).
        tokenizers: modality -> its saved tokenizer state.
        load: the weights, named as this framework's `TrainModule` names them (``core.…``, ``head.…``).
        record: what ``run.json`` says about the source.
        keep: whatever must live as long as the origin (a temporary directory of tokenizer state).
    """

    spec: str
    model: dict
    tokenizers: dict[str, TokenizerState]
    load: Callable[[], dict[str, Tensor]]
    record: dict = field(default_factory=dict)
    keep: object = None
