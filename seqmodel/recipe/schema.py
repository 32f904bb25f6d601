"""Recipes: TOML files validated into typed config sections.

    [model]        seqmodel.model.config.ModelConfig
    [train]        TrainConfig below
    [data]         source = "<plugin>", then that source plugin's Config keys
    [tokenizer]    kind = "<plugin>", field, modality, then the tokenizer's Config keys
    [tokenizers.M] the same, one table per modality M (for several tokenizers)
    [task]         kind = "<plugin>", then the task's Config keys
    [sample]       seqmodel.generate.SampleConfig

Every problem is a one-line `UserError` that names the file, the table and the key. Relative
paths (the plugins' `path_field`s and `[train] init_from`) are read against the recipe file's
folder; those given with ``--set``, in a recipe dict or in a run's recipe.json against the current
directory. A run records them absolute.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from seqmodel import registry
from seqmodel.config import absolute, absolute_paths, build, check_plain, parse_override
from seqmodel.errors import UserError, cut, shown
from seqmodel.model.config import LoRAConfig, ModelConfig, SampleConfig

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
MOST_THREADS = 1024  # torch.set_num_threads(10**6) crashes the process
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
    several times slower), "fp16" (GPU only) or "auto" (bf16 where the GPU or CPU computes in it
    natively, else fp32; the run's log says which)."""
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
    peer_timeout: float = 600.0
    """Seconds a process of a multi-process run waits for the others at a step, an evaluation or a
    checkpoint before the run stops with a one-line error (a machine that froze, crashed or lost
    its network). It must exceed the longest time rank 0 works alone: the task's metrics at an
    evaluation, writing a checkpoint. Before the first step (fitting, preparing data) the wait is
    at least 30 minutes."""
    log_with: str | list[str] = ""
    """Experiment trackers through accelerate ("tensorboard", "wandb", ...); metrics.jsonl is always written."""
    keep_best: str = ""
    """Also keep the checkpoint with the best value of this metric ("val_loss", or one the task reports
    at each evaluation: "accuracy", "exact_match", "mean_return" ...) as checkpoints/best; "" keeps none."""
    best_mode: str = "auto"
    """Whether `keep_best` minimises ("min") or maximises ("max") its metric; "auto": min for names with
    loss, cer, error, bits, perplexity or mse in them, max otherwise."""
    fingerprint_batches: bool = False
    """Append "step micro rank sha1" of every training batch to batches.rankN.log (data-order audits)."""
    init_from: str = ""
    """Start from the weights of another run (its directory, or one of its checkpoint directories)
    or of a GPT-2-family HuggingFace model ("hf:DIR" offline, "hf:NAME" from the hub), with its
    tokenizer state (not refitted) and a fresh optimizer and schedule. The model's shape is the
    source's; `[model]` keys the recipe sets override it. A relative directory is read against the
    recipe file's folder, like every path in a recipe."""
    init_weights: bool = True
    """With `init_from`: false takes only the source's `[model]` shape (the recipe's keys on top),
    with fresh random weights and tokenizers fitted on this recipe's data, as without `init_from`:
    the from-scratch baseline of a fine-tuning recipe, at the same shape."""
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
        if self.peer_timeout <= 0:
            bad.append(("peer_timeout", f"must be positive, got {self.peer_timeout}"))
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                bad.append((key, f"must be in [0, 1), got {getattr(self, key)}"))
        if not -2**63 <= self.seed < 2**64:
            bad.append(("seed", f"must fit in 64 bits (from -2**63 to 2**64 - 1), got {self.seed}"))
        if self.threads > MOST_THREADS:
            bad.append(("threads", f"must be at most {MOST_THREADS}, got {self.threads}"))
        if self.precision not in PRECISIONS:
            bad.append(("precision", f"expected one of {', '.join(PRECISIONS)}, got {self.precision!r}"))
        if self.distributed not in ("ddp", "fsdp"):
            bad.append(("distributed", f"expected ddp or fsdp, got {self.distributed!r}"))
        if self.best_mode not in ("auto", "min", "max"):
            bad.append(("best_mode", f"expected auto, min or max, got {self.best_mode!r}"))
        if self.device not in ("auto", "cpu", "cuda"):
            bad.append(("device", f"expected auto, cpu or cuda, got {self.device!r}"))
        if not self.init_weights and not self.init_from:
            bad.append(("init_weights", "false needs init_from (the run whose [model] shape to take)"))
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
            raise UserError(f"{where} {key}: expected a non-empty string, got {shown(value)}")
    return TokenizerBinding(name, cls, build(cls.Config, rest, where), fld, mod)


PLUGIN_TABLES = (("data", "source", "source"), ("task", "kind", "task"))
HF_SOURCE = "hf:"  # `[train] init_from = "hf:DIR_OR_NAME"` (seqmodel.training.warm_start)


def absolute_source(spec: str, base: str | Path) -> str:
    """A warm-start source (`[train] init_from`) made absolute against `base`: a run or checkpoint
    directory, or the directory of ``hf:DIR``. ``hf:NAME`` stays a hub name unless it looks like a
    path (``./``, ``../``, ``/``, ``~``) or names a folder in `base`."""
    if not spec.startswith(HF_SOURCE):
        return absolute(spec, base)
    name = spec.removeprefix(HF_SOURCE)
    if name.startswith((".", "/", "~")) or (name and (Path(base) / name).is_dir()):
        return HF_SOURCE + absolute(name, base)
    return spec


def with_absolute_paths(raw: dict, base: str | Path) -> dict:
    """A copy of a raw recipe whose plugin tables have their path fields, and whose `[train]
    init_from` its directory, made absolute against `base` (`seqmodel.config.absolute_paths`,
    `absolute_source`). A table naming an unknown plugin is left as it is, for `parse_recipe`
    to report."""
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)

    def resolved(table: Any, kind: str, key: str) -> Any:
        if not isinstance(table, dict) or not isinstance(table.get(key), str):
            return table
        try:
            cls = registry.load(kind, table[key])
        except UserError:
            return table
        return absolute_paths(cls.Config, table, base)

    for name, key, kind in PLUGIN_TABLES:
        if name in out:
            out[name] = resolved(out[name], kind, key)
    train = out.get("train")
    if isinstance(train, dict) and isinstance(train.get("init_from"), str):
        out["train"] = train | {"init_from": absolute_source(train["init_from"], base)}
    if "tokenizer" in out:
        out["tokenizer"] = resolved(out["tokenizer"], "tokenizer", "kind")
    if isinstance(out.get("tokenizers"), dict):
        out["tokenizers"] = {m: resolved(t, "tokenizer", "kind") for m, t in out["tokenizers"].items()}
    return out


def parse_recipe(raw: dict, where: str = "<recipe>", base: str | Path | None = None) -> Recipe:
    """Validate a recipe's tables (already parsed from TOML) into a `Recipe`; relative paths are
    read against `base` (default: the current directory)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a table of recipe tables, got {type(raw).__name__}")
    check_plain(raw, f"{where}:", tables=True)
    raw = with_absolute_paths(raw, Path.cwd() if base is None else base)
    for key in raw:
        if key not in TABLES:
            close = difflib.get_close_matches(key, TABLES, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else f" (known tables: {', '.join(TABLES)})"
            raise UserError(f"{where}: [{cut(key)}]: unknown table{hint}")
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
                raise UserError(f"--set {shown(text)}: {section} is not a table")
        node[key] = value
    return out


def read_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such recipe file")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None
    except RecursionError:
        raise UserError(f"{path}: not a recipe: arrays or inline tables nest too deeply") from None
    except (UnicodeDecodeError, OSError) as err:
        raise UserError(f"{path}: cannot read the recipe: {err}") from None
    check_plain(raw, f"{path}:", tables=True)
    return raw


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe file: its relative paths are read against its own
    folder, those of `overrides` against the current directory."""
    raw = with_absolute_paths(read_toml(path), Path(path).resolve().parent)
    return parse_recipe(apply_overrides(raw, list(overrides)), str(path))
