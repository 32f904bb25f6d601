"""Recipes: TOML files validated into typed config sections.

    [model]        seqmodel.model.ModelConfig
    [train]        TrainConfig below
    [data]         source = "<plugin>", then that source plugin's Config keys
    [tokenizer]    kind = "<plugin>", field, modality, then the tokenizer's Config keys
    [tokenizers.M] the same, one table per modality M (for several tokenizers)
    [task]         kind = "<plugin>", then the task's Config keys
    [sample]       seqmodel.generate.SampleConfig

Every problem is a one-line `UserError` that names the file, the table and the key.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import registry
from .config import build, parse_override
from .errors import UserError
from .generate import SampleConfig
from .lora import LoRAConfig
from .model import ModelConfig

PRECISIONS = ("fp32", "bf16", "fp16")
TABLES = ("model", "train", "data", "tokenizer", "tokenizers", "task", "sample")


@dataclass
class TrainConfig:
    """The `[train]` table."""

    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 12
    """Examples per micro-step, summed over all processes."""
    grad_accum: int = 1
    """Micro-steps accumulated per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (after warmup)."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""
    warmup: int = 100
    """Linear warmup steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on biases, norms)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 turns clipping off)."""
    eval_every: int = 250
    """Evaluate on the validation split every this many steps (and at the end)."""
    eval_batches: int = 20
    """Validation batches per evaluation."""
    log_every: int = 10
    """Write a training-loss line to metrics.jsonl every this many steps."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (and at the end)."""
    seed: int = 1337
    """Seeds initialisation, data order and dropout: the same seed gives the same run."""
    precision: str = "fp32"
    """"fp32", "bf16" (autocast; GPU, or CPUs with bf16 instructions: elsewhere it is emulated and
    several times slower) or "fp16" (GPU only)."""
    device: str = "auto"
    """"auto" (GPU when there is one), "cpu" or "cuda"."""
    compile: bool = False
    """Wrap the model with torch.compile."""
    threads: int = 0
    """CPU threads for torch (0 leaves torch's default)."""
    cpu_memory_cache: bool = True
    """On CPU under Linux/glibc, keep memory freed during training for reuse instead of returning it
    to the system, as PyTorch's CUDA caching allocator does (see seqmodel/cpu_memory.py): large
    activations skip page faults. Freed memory stays reserved by the process."""
    distributed: str = "ddp"
    """How several processes share the model: "ddp" (replicas) or "fsdp" (sharded; CUDA GPUs only)."""
    log_with: str | list[str] = ""
    """Experiment trackers through accelerate ("tensorboard", "wandb", ...); metrics.jsonl is always written."""
    fingerprint_batches: bool = False
    """Append "step micro rank sha1" of every training batch to batches.rankN.log (data-order audits)."""
    init_from: str = ""
    """Start from the weights of another run (its directory, or one of its checkpoint directories)
    or of a GPT-2-family HuggingFace model ("hf:DIR" offline, "hf:NAME" from the hub), with its
    tokenizer state (not refitted) and a fresh optimizer and schedule. The model's shape is the
    source's; `[model]` keys the recipe sets override it."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Low-rank adapters through `peft` (rank 0: off): only the adapters (and a task's head) train."""

    def validate(self) -> list[tuple[str, str]]:
        bad = []
        for key in ("steps", "batch_size", "grad_accum", "eval_batches", "eval_every", "log_every", "checkpoint_every"):
            if getattr(self, key) < 1:
                bad.append((key, f"must be at least 1, got {getattr(self, key)}"))
        for key in ("lr", "min_lr", "weight_decay", "grad_clip", "warmup", "threads"):
            if getattr(self, key) < 0:
                bad.append((key, f"must not be negative, got {getattr(self, key)}"))
        if self.precision not in PRECISIONS:
            bad.append(("precision", f"expected one of {', '.join(PRECISIONS)}, got {self.precision!r}"))
        if self.distributed not in ("ddp", "fsdp"):
            bad.append(("distributed", f"expected ddp or fsdp, got {self.distributed!r}"))
        if self.device not in ("auto", "cpu", "cuda"):
            bad.append(("device", f"expected auto, cpu or cuda, got {self.device!r}"))
        return bad


@dataclass
class PluginChoice:
    """A plugin picked by name with its validated config."""

    name: str
    cls: Any
    config: Any


@dataclass
class TokenizerBinding(PluginChoice):
    """A tokenizer bound to a field of the source's examples and a modality name."""

    field: str = "text"
    modality: str = "text"


@dataclass
class Recipe:
    model: ModelConfig
    train: TrainConfig
    data: PluginChoice
    tokenizers: dict[str, TokenizerBinding]
    task: PluginChoice
    sample: SampleConfig
    path: str = "<recipe>"
    raw: dict = field(default_factory=dict)

    def resolved(self) -> dict:
        """Every setting, defaults included, as plain data (saved with each run)."""
        return {
            "model": asdict(self.model),
            "train": asdict(self.train),
            "data": {"source": self.data.name, **asdict(self.data.config)},
            "tokenizers": {m: {"kind": b.name, "field": b.field, **asdict(b.config)} for m, b in self.tokenizers.items()},
            "task": {"kind": self.task.name, **asdict(self.task.config)},
            "sample": asdict(self.sample),
        }


def _plugin(kind: str, table: Any, key: str, where: str) -> tuple[str, Any, dict]:
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table")
    rest = dict(table)
    name = rest.pop(key, None)
    if not isinstance(name, str):
        raise UserError(f"{where} {key}: required, the name of a {kind} plugin")
    return name, registry.load(kind, name, f"{where} {key}"), rest


def _tokenizer(table: Any, where: str, modality: str | None, default_field: str) -> TokenizerBinding:
    name, cls, rest = _plugin("tokenizer", table, "kind", where)
    fld = rest.pop("field", default_field)
    mod = rest.pop("modality", modality or fld)
    for key, value in (("field", fld), ("modality", mod)):
        if not isinstance(value, str) or not value:
            raise UserError(f"{where} {key}: expected a non-empty string, got {value!r}")
    return TokenizerBinding(name, cls, build(cls.Config, rest, where), fld, mod)


def parse_recipe(raw: dict, where: str = "<recipe>") -> Recipe:
    """Validate a recipe's tables (already parsed from TOML) into a `Recipe`."""
    for key in raw:
        if key not in TABLES:
            close = difflib.get_close_matches(key, TABLES, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else f" (known tables: {', '.join(TABLES)})"
            raise UserError(f"{where}: [{key}]: unknown table{hint}")
    for key in ("data", "task"):
        if key not in raw:
            raise UserError(f"{where}: [{key}]: missing table")
    if "tokenizer" in raw and "tokenizers" in raw:
        raise UserError(f"{where}: give either [tokenizer] or [tokenizers.NAME] tables, not both")
    if "tokenizer" in raw:
        b = _tokenizer(raw["tokenizer"], f"{where}: [tokenizer]", None, "text")
        tokenizers = {b.modality: b}
    elif isinstance(raw.get("tokenizers"), dict) and raw["tokenizers"]:
        tokenizers = {}
        for mod, table in raw["tokenizers"].items():
            b = _tokenizer(table, f"{where}: [tokenizers.{mod}]", mod, mod)
            tokenizers[b.modality] = b
    else:
        raise UserError(f"{where}: [tokenizer]: missing table (or [tokenizers.NAME] tables)")
    source, source_cls, source_rest = _plugin("source", raw["data"], "source", f"{where}: [data]")
    task, task_cls, task_rest = _plugin("task", raw["task"], "kind", f"{where}: [task]")
    return Recipe(
        model=build(ModelConfig, raw.get("model", {}), f"{where}: [model]"),
        train=build(TrainConfig, raw.get("train", {}), f"{where}: [train]"),
        data=PluginChoice(source, source_cls, build(source_cls.Config, source_rest, f"{where}: [data]")),
        tokenizers=tokenizers,
        task=PluginChoice(task, task_cls, build(task_cls.Config, task_rest, f"{where}: [task]")),
        sample=build(SampleConfig, raw.get("sample", {}), f"{where}: [sample]"),
        path=where,
        raw=raw,
    )


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to a raw recipe (a copy)."""
    out = json.loads(json.dumps(raw))
    for text in overrides:
        section, key, value = parse_override(text)
        node = out
        for part in section.split("."):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {text!r}: {section} is not a table")
        node[key] = value
    return out


def read_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such recipe file")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None
    except (UnicodeDecodeError, OSError) as err:
        raise UserError(f"{path}: cannot read the recipe: {err}") from None


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe file."""
    raw = apply_overrides(read_toml(path), list(overrides))
    return parse_recipe(raw, str(path))
