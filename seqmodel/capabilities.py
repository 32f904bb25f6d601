"""Which optional abilities a plugin declares, and the members each one needs; the split names
every source gives.

Plugins list their capabilities in a ``capabilities`` tuple; the registry checks at load that
the members of each are there (`seqmodel.registry`), and the core reads only the declaration
(`declared`, `can`). Plain data, free of torch, so that the registry (and a recipe's parse)
imports nothing heavy. The Protocols that document each member are in `seqmodel.plugin` and
`seqmodel.task`.
"""

from __future__ import annotations

from typing import Any

from seqmodel.errors import UserError

SPLITS = ("train", "val", "test")
"""The splits of every source, in this order (a split's index here seeds its own randomness)."""


def check_split(name: str) -> str:
    """`name`, when it is one of `SPLITS`; else a one-line error (what a source's `split` raises)."""
    if name not in SPLITS:
        raise UserError(f"unknown split {name!r} (expected one of {', '.join(SPLITS)})")
    return name

TOKENIZER_CAPABILITIES: dict[str, tuple[str, ...]] = {
    "augment": ("encode",),  # encode(value, *, train, generator): random augmentation driven by the step's generator
    "read_file": ("read_file",),  # read_file(path) -> a field value (`seqmodel predict`, `sample --prompt FILE`)
    "pieces": ("piece",),  # piece(id) -> the text of one id (`seqmodel tokenize`, `score`)
    "separator": ("eot_id",),  # eot_id: the id put between documents of a token stream (or None)
    "examples": ("examples",),  # examples() -> a few field values (`seqmodel plugins check`)
    "compare": ("same",),  # same(value, decoded) -> bool, for a lossy or re-represented decode
    "modalities": ("specs",),  # specs() -> {role: ModalitySpec}: a tokenizer of several modalities
    "hf_tokenizer": ("hf_tokenizer",),  # the state as a HuggingFace `tokenizers` tokenizer.json, both ways: hf_tokenizer() ->
    # a `tokenizers.Tokenizer` (`seqmodel export --format hf`), and load(directory) reads a directory holding only a
    # tokenizer.json (`init_from = "hf:..."`; one it cannot use is a one-line error)
    "preprocessing": ("preprocessing",),  # preprocessing() -> a JSON-able description of how read_file and encode (not
    # training) turn an input file into the segment's values or ids and positions, for code outside seqmodel
    # (`seqmodel export --format onnx` writes it into signature.json)
    "parts": ("encode_parts",),  # encode_parts(parts) -> the ids of the joined value, part by part; fit takes parts as values (see `Parts`)
}
"""Tokenizer capability -> the members a tokenizer declaring it must have."""


SOURCE_CAPABILITIES: dict[str, tuple[str, ...]] = {
    "info": ("info",),  # info() -> {"label_names": [...], "env_id": ...}: facts tasks may read
    "parts": ("parts",),  # parts(split, field) -> `Parts` (long values read piece by piece), or None for that field
    "resume": ("resumable",),  # resumable(split) -> whether `split` gives an iterable with state_dict() and
    # load_state_dict(state) (as datasets.IterableDataset): a preparation killed part-way continues from there
}
"""Source capability -> the members a source declaring it must have."""


TASK_CAPABILITIES: dict[str, tuple[str, ...]] = {
    "generate": ("generate",),
    "score": ("score",),
    "predict": ("predict",),
    "sample": ("sample",),
    "report": ("report",),
    "metrics": ("metrics", "loss_label"),
    "state": ("save", "load"),
    "modalities": ("model_specs",),
    "export": ("export_outputs",),
    "export_info": ("export_info",),  # export_info() -> {output name: JSON-able facts} for export_outputs' outputs
    # (the classify task: {"logits": {"classes": [...]}}), written beside each output in an ONNX signature.json
    "eval_options": ("EvalOptions",),  # a dataclass of `seqmodel eval --set KEY=VALUE` options
}
"""Task capability -> the members a task declaring it must have (their Protocols: `seqmodel.task`)."""


def declared(obj: Any) -> frozenset[str]:
    """The capabilities a plugin (class or instance) declares."""
    cls = obj if isinstance(obj, type) else type(obj)
    return frozenset(getattr(cls, "capabilities", ()))


def can(plugin: Any, capability: str) -> bool:
    """Whether `plugin` declares `capability` (the registry checked the declaration at load)."""
    return capability in declared(plugin)
