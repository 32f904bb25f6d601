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
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from seqmodel import registry
from seqmodel.config import absolute, absolute_paths, build, check_plain, parse_override
from seqmodel.errors import UserError, cut, shown
from seqmodel.model.config import LoRAConfig, ModelConfig, SampleConfig
from seqmodel.recipe.presets import resolve

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
MOST_THREADS = 1024  # torch.set_num_threads(10**6) crashes the process
TABLES = ("model", "train", "data", "tokenizer", "tokenizers", "task", "sample", "mixture")


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
    at each evaluation: "accuracy", "exact_match", "mean_return" ...) as checkpoints/best; "" keeps none.
    A name the task does not report is refused by `check` and `run`."""
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
    """A validated recipe. A mixture (`members`) has no data or task of its own: each member is a
    single-task recipe, and `tokenizers` holds every member's, one per modality."""

    model: ModelConfig
    train: TrainConfig
    data: PluginChoice | None
    tokenizers: dict[str, TokenizerBinding]
    task: PluginChoice | None
    sample: SampleConfig
    path: str = "<recipe>"
    raw: dict = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)

    def plugins(self) -> list[tuple[str, str]]:
        """(kind, name) of every plugin the recipe uses, each once, in recipe order."""
        if self.members:
            return list(dict.fromkeys(p for m in self.members.values() for p in m.recipe.plugins()))
        used = [("source", self.data.name), ("task", self.task.name)]
        return list(dict.fromkeys(used + [("tokenizer", b.name) for b in self.tokenizers.values()]))

    def resolved(self) -> dict:
        """Every setting, defaults included, as plain data (saved with each run)."""
        if self.members:
            return {"model": asdict(self.model), "train": asdict(self.train), "mixture": resolved_members(self.members)}
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
    if key not in rest:
        raise UserError(f"{where} {key}: required, the name of a {kind} plugin")
    name = rest.pop(key)
    if not isinstance(name, str):
        several = (f"; a recipe has one {kind}, and several files go in its own keys (seqmodel plugins show NAME)"
                   if isinstance(name, list) and kind == "source" else "")
        raise UserError(f"{where} {key}: expected the name of one {kind} plugin (a string), got {shown(name)}{several}")
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
    if isinstance(out.get("mixture"), dict):
        out["mixture"] = {name: member_paths(table, base) for name, table in out["mixture"].items()}
    return out


def member_paths(table: Any, base: str | Path) -> Any:
    """A `[mixture.NAME]` table with its paths absolute: the recipe file it names (a shipped
    recipe's name stays a name) and its inline plugin tables."""
    if not isinstance(table, dict):
        return table
    out = with_absolute_paths(table, base)
    name = out.get("recipe")
    if isinstance(name, str) and ("/" in name or name.endswith(".toml")):
        out["recipe"] = str(Path(base) / Path(name).expanduser())
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
    if "mixture" in raw:
        return parse_mixture(raw, where)
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


# -- mixtures ------------------------------------------------------------------------------------
# One model trained on several members, each its own data, tokenizers, task and mask, in one run:
#
#     [model]                      the one shared stack (arch "decoder" or "encoder": one stack)
#     [train]                      the one schedule
#     [mixture.NAME]               recipe = "char_lm" (a shipped name or a file), weight,
#                                  loss_weight, mask / layer_masks (default: the named recipe's)
#     [mixture.NAME.data]          inline tables, merged key by key over the named recipe's (a table
#     [mixture.NAME.tokenizer(s)]  naming another plugin replaces it); or the whole member when it
#     [mixture.NAME.task/sample]   names no recipe
#
# A member is parsed into an ordinary single-task `Recipe` (the mixture's `[model]` with the
# member's mask, the mixture's `[train]`), so everything a single-task run does, a member does.

MEMBER_KEYS = ("recipe", "weight", "loss_weight", "mask", "layer_masks", "data", "tokenizer", "tokenizers", "task",
               "sample")
MEMBER_TABLES = ("data", "task", "sample")
PLUGIN_KEY = {"data": "source", "task": "kind", "sample": None}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SINGLE_TASK_TABLES = ("data", "tokenizer", "tokenizers", "task", "sample")


@dataclass
class Member:
    """One member of a mixture.

    Attributes:
        name: its `[mixture.NAME]` key (metrics are logged as ``NAME/metric``).
        recipe: the member as a single-task recipe (the mixture's model with its mask, the
            mixture's schedule).
        weight: how often a micro-batch is drawn from it, relative to the other members'.
        loss_weight: factor on its loss.
    """

    name: str
    recipe: Recipe
    weight: float = 1.0
    loss_weight: float = 1.0


def merged(named: Any, inline: Any, plugin_key: str | None) -> Any:
    """An inline table over a named recipe's: key by key, unless it names another plugin."""
    if not isinstance(named, dict) or not isinstance(inline, dict):
        return inline if inline is not None else named
    if plugin_key and plugin_key in inline and inline[plugin_key] != named.get(plugin_key):
        return dict(inline)
    return named | inline


def tokenizer_tables(raw: dict) -> dict[str, Any]:
    """A recipe's tokenizer tables by modality: ``[tokenizer]`` becomes ``{modality: table}``."""
    if isinstance(raw.get("tokenizer"), dict):
        table = raw["tokenizer"]
        return {str(table.get("modality", table.get("field", "text"))): table}
    return dict(raw.get("tokenizers") or {})


def positive(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{where} {key}: expected a positive number, got {shown(value)}")
    return float(value)


def named_recipe(table: dict, where: str) -> tuple[dict, str]:
    """The raw tables of the recipe a member names (paths made absolute against its folder)."""
    name = table["recipe"]
    if not isinstance(name, str) or not name:
        raise UserError(f"{where} recipe: expected a shipped recipe's name or a recipe file, got {shown(name)}")
    try:
        found = resolve(name)
    except UserError as err:
        raise UserError(f"{where} recipe: {err}") from None
    raw = read_toml(found)
    if "mixture" in raw:
        raise UserError(f"{where} recipe: {found} is itself a mixture; a member names a single-task recipe")
    return with_absolute_paths(raw, found.resolve().parent), str(found)


def member_tables(table: Any, where: str, model: dict) -> dict:
    """The raw single-task recipe of one member: its named recipe's tables with the inline ones
    over them, the mixture's `[model]` with the member's mask, no `[train]` yet."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table (weight, recipe or data/tokenizer/task tables), got {shown(table)}")
    for key in table:
        if key not in MEMBER_KEYS:
            raise UserError(f"{where} {cut(key)}: unknown key (a member takes: {', '.join(MEMBER_KEYS)})")
    named, origin = named_recipe(table, where) if "recipe" in table else ({}, "")
    inline = {k: v for k, v in table.items() if k in SINGLE_TASK_TABLES}
    raw = {key: merged(named.get(key), inline.get(key), PLUGIN_KEY[key]) for key in MEMBER_TABLES
           if named.get(key) is not None or inline.get(key) is not None}
    tokenizers = tokenizer_tables(named)
    given = tokenizer_tables(inline)
    if isinstance(inline.get("tokenizer"), dict) and "modality" not in inline["tokenizer"] and len(tokenizers) == 1:
        given = {next(iter(tokenizers)): inline["tokenizer"]}  # [mixture.N.tokenizer] is the named recipe's one tokenizer
    for modality, t in given.items():
        tokenizers[modality] = merged(tokenizers.get(modality), t, "kind")
    if tokenizers:
        raw["tokenizers"] = {m: {"modality": m} | t if isinstance(t, dict) else t for m, t in tokenizers.items()}
    named_model = named.get("model") if isinstance(named.get("model"), dict) else {}
    if named_model.get("arch") == "encoder_decoder" and "mask" not in table and "layer_masks" not in table:
        raise UserError(f"{where}: {origin or 'its recipe'} is an encoder-decoder (cross-attention to a separate "
                        "encoder), and a mixture's members share one stack: give the member a mask over one stream, "
                        "e.g. mask = \"prefix\" (the inputs, then the target; see docs/mixtures.md)")
    mask = {k: table[k] if k in table else named_model[k] for k in ("mask", "layer_masks") if k in table or k in named_model}
    if "mask" in table and "layer_masks" not in table:
        mask["layer_masks"] = []
    raw["model"] = {k: v for k, v in model.items()} | mask
    return raw


def parse_members(raw: dict, where: str) -> dict[str, tuple[dict, float, float]]:
    """name -> (its raw single-task recipe, weight, loss_weight) for every `[mixture.NAME]`."""
    tables = raw["mixture"]
    if not isinstance(tables, dict) or not tables:
        raise UserError(f"{where}: [mixture]: expected one [mixture.NAME] table per member")
    for key in SINGLE_TASK_TABLES:
        if key in raw:
            raise UserError(f"{where}: [{key}]: a mixture gives each member its own [mixture.NAME.{key}] (or names a "
                            "recipe); the top level holds only [model], [train] and [mixture.NAME] tables")
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    if model.get("arch") == "encoder_decoder":
        raise UserError(f"{where}: [model] arch: a mixture trains one stack, so \"decoder\" or \"encoder\" "
                        "(each member brings its own mask), not \"encoder_decoder\"")
    members = {}
    for name, table in tables.items():
        here = f"{where}: [mixture.{cut(name)}]"
        if not NAME.fullmatch(name) or name in TABLES:
            raise UserError(f"{here}: a member name is letters, digits, '_' and '-' (it names metrics and folders)")
        member = member_tables(table, here, model)
        weight = positive(table.get("weight", 1.0), "weight", here)
        loss_weight = positive(table.get("loss_weight", 1.0), "loss_weight", here)
        members[name] = (member, weight, loss_weight)
    return members


def check_shared_modalities(members: dict[str, Member], where: str) -> None:
    """Members that name the same modality must tokenize it with the same plugin and settings."""
    seen: dict[str, tuple[str, Any]] = {}
    for name, member in members.items():
        for modality, binding in member.recipe.tokenizers.items():
            first = seen.setdefault(modality, (name, binding))
            other = first[1]
            if (other.name, other.config) != (binding.name, binding.config):
                a, b = asdict(other.config), asdict(binding.config)
                differ = (f"kind {other.name!r} vs {binding.name!r}" if other.name != binding.name else
                          ", ".join(f"{k} {shown(a[k])} vs {shown(b[k])}" for k in a if a[k] != b.get(k)))
                raise UserError(f"{where}: [mixture.{first[0]}] and [mixture.{name}] both have a modality {modality!r} "
                                f"but tokenize it differently ({differ}); give one of them another modality name "
                                "([mixture.NAME.tokenizers.OTHER]), or the same settings")


def resolved_members(members: dict[str, Member]) -> dict:
    """The `[mixture]` tables with every setting, as saved with a run (parsed back by `parse_members`)."""
    out = {}
    for name, m in members.items():
        r = m.recipe.resolved()
        out[name] = {"weight": m.weight, "loss_weight": m.loss_weight, "mask": r["model"]["mask"],
                     "layer_masks": r["model"]["layer_masks"], "data": r["data"], "tokenizers": r["tokenizers"],
                     "task": r["task"], "sample": r["sample"]}
    return out


def parse_mixture(raw: dict, where: str) -> Recipe:
    """A mixture recipe: each member parsed as a single-task recipe with the mixture's `[model]`
    (its own mask) and `[train]`."""
    members = {}
    for name, (member, weight, loss_weight) in parse_members(raw, where).items():
        member["train"] = raw.get("train", {})
        recipe = parse_recipe(member, f"{where}: [mixture.{name}]")
        members[name] = Member(name, recipe, weight, loss_weight)
    check_shared_modalities(members, where)
    train = build(TrainConfig, raw.get("train", {}), f"{where}: [train]")
    if train.init_from:
        raise UserError(f"{where}: [train] init_from: a mixture starts from scratch (a warm start of a whole mixture "
                        "is not supported yet)")
    tokenizers = {m: b for member in members.values() for m, b in member.recipe.tokenizers.items()}
    return Recipe(model=build(ModelConfig, raw.get("model", {}), f"{where}: [model]"), train=train, data=None,
                  tokenizers=tokenizers, task=None, sample=SampleConfig(), path=where, raw=raw, members=members)
