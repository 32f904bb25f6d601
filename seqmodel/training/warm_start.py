"""Warm starts: a new run that begins from another model's weights (`[train] init_from`).

The source is a run directory (its newest checkpoint), one of its checkpoint directories, or
``hf:DIR_OR_NAME``, a GPT-2-family HuggingFace model (`seqmodel.interop.hf_gpt2`); each is an
`seqmodel.interop.origin.Origin`. The new run

- takes the source's `[model]` table, with the keys its own recipe sets on top (so a fine-tuning
  recipe names only what it changes: dropout, context, masks ...), and must have its architecture;
- loads the source's tokenizer state instead of fitting its tokenizers (the ids must mean what
  they meant to the weights), so each modality's tokenizer plugin must be the source's (a run),
  or one that declares the capability of reading the source's format (``hf_tokenizer``: a
  HuggingFace ``tokenizer.json``);
- copies every parameter by name, refusing one whose shape differs (naming it); 1-D position
  tables are cut to a shorter context, as nanoGPT's ``crop_block_size``; LoRA adapters and a
  task's head may be new (a LoRA source is merged first: the new run starts from what the adapted
  model computes). The optimizer and the learning-rate schedule start fresh;
- records where the weights came from in ``run.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from seqmodel import registry
from seqmodel.capabilities import can
from seqmodel.config import build
from seqmodel.errors import UserError
from seqmodel.interop.hf_gpt2 import hf_origin
from seqmodel.interop.origin import Origin, TokenizerState
from seqmodel.model.config import LoRAConfig, ModelConfig
from seqmodel.model.lora import base_name, is_adapter, merged_state
from seqmodel.recipe.schema import Recipe
from seqmodel.training import checkpoint

HF_PREFIX = "hf:"
POSITION_TABLES = "core.positions."


@lru_cache(maxsize=4)
def open_origin(spec: str, modalities: tuple[str, ...] = ()) -> Origin:
    """The source named by `spec` (cached: the run reads it when it starts and again for the weights)."""
    if spec.startswith(HF_PREFIX):
        return hf_origin(spec, modalities)
    return run_origin(spec)


def run_origin(spec: str) -> Origin:
    """A seqmodel run directory, or one of its checkpoint directories, as a warm-start source."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"{spec}: no such run directory")
    if not path.is_dir():
        raise UserError(f"{spec}: a file, not a run directory or a checkpoint directory")
    if (path / "model.safetensors").is_file() and path.parent.name == "checkpoints":
        ckpt, run_dir = path, path.parent.parent
    else:
        run_dir, ckpt = path, checkpoint.latest(path)
    recipe_path = run_dir / "recipe.json"
    if not recipe_path.is_file():
        raise UserError(f"{spec}: not a seqmodel run directory (no recipe.json)")
    try:
        recipe = json.loads(recipe_path.read_text())
        model, tables = dict(recipe["model"]), dict(recipe["tokenizers"])
        tokenizers = {m: TokenizerState(run_dir / "tokenizers" / m, kind=str(t["kind"])) for m, t in tables.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{recipe_path}: corrupt run recipe: {err}") from None
    if ckpt is None or not (ckpt / "model.safetensors").is_file():
        raise UserError(f"{spec}: the run has no complete checkpoint to start from")
    weights = ckpt / "model.safetensors"
    step = checkpoint.read_state(ckpt).get("step")
    record = {"init_from": spec, "run": str(run_dir.resolve()), "checkpoint": ckpt.name, "step": step,
              "weights_sha256": _sha256(weights)}
    adapters = build(LoRAConfig, recipe.get("train", {}).get("lora", {}), f"{recipe_path}: [train] lora")
    if adapters.rank:  # a LoRA run: start from what its adapted model computes
        return Origin(spec, model, tokenizers, lambda: merged_state(_read_safetensors(weights), adapters), record)
    return Origin(spec, model, tokenizers, lambda: _read_safetensors(weights), record)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for every kind of bad file
        raise UserError(f"{path}: not a checkpoint (cannot read safetensors weights: {err})") from None


# -- the recipe --------------------------------------------------------------------------------
def resolve(recipe: Recipe, shape: dict | None = None) -> Recipe:
    """The recipe with the source's model shape (when it has `init_from`); checks that the
    architecture and every tokenizer plugin are the source's. `shape`: the `[model]` table a
    resumed run recorded, taken instead of the source's (which is then not opened)."""
    spec = recipe.train.init_from
    if not spec:
        return recipe
    explicit = recipe.raw.get("model", {}) if isinstance(recipe.raw.get("model"), dict) else {}
    if shape is not None:
        return replace(recipe, model=build(ModelConfig, shape | explicit, f"{recipe.path}: [model]"))
    where = f"{recipe.path}: [train] init_from"
    origin = _open(recipe)
    source_arch = origin.model.get("arch", ModelConfig.arch)
    if source_arch != recipe.model.arch:
        raise UserError(f"{where}: {spec} is a run of another architecture ({source_arch!r}); "
                        f"this recipe's [model] arch is {recipe.model.arch!r}")
    for m, binding in recipe.tokenizers.items() if recipe.train.init_weights else ():
        if m not in origin.tokenizers:
            raise UserError(f"{where}: {spec} has no tokenizer for modality {m!r} "
                            f"(it has: {', '.join(origin.tokenizers) or 'none'})")
        _check_reader(recipe, m, binding.name, origin.tokenizers[m])
    model = build(ModelConfig, origin.model | explicit, f"{recipe.path}: [model]")
    return replace(recipe, model=model)


def _check_reader(recipe: Recipe, modality: str, kind: str, state: TokenizerState) -> None:
    """A one-line error unless tokenizer plugin `kind` can read the source's tokenizer state."""
    where, spec = f"{recipe.path}: [tokenizers.{modality}] kind", recipe.train.init_from
    if state.kind and kind != state.kind:
        raise UserError(f"{where}: {kind!r}, but {spec} tokenizes {modality!r} with {state.kind!r} "
                        "(a warm start keeps the source's tokenizer)")
    if state.capability and not can(registry.load("tokenizer", kind, where), state.capability):
        raise UserError(f"{where}: {kind!r} cannot read the tokenizer of {spec} ({state.what}): it does not "
                        f"declare the {state.capability!r} capability")


def _open(recipe: Recipe) -> Origin:
    try:
        return open_origin(recipe.train.init_from, tuple(recipe.tokenizers))
    except UserError as err:
        raise UserError(f"{recipe.path}: [train] init_from: {err}") from None


def tokenizer_states(recipe: Recipe) -> dict[str, Path] | None:
    """Modality -> the directory its tokenizer loads its state from (None: fit them)."""
    if not takes_weights(recipe):
        return None
    return {m: state.directory for m, state in _open(recipe).tokenizers.items() if m in recipe.tokenizers}


def takes_weights(recipe: Recipe) -> bool:
    """Whether the run starts from its source's weights and tokenizer state (not only its shape)."""
    return bool(recipe.train.init_from) and recipe.train.init_weights


def record(recipe: Recipe) -> dict:
    """What ``run.json`` says about the source of the weights, or of the shape alone (empty
    without `init_from`)."""
    if not recipe.train.init_from:
        return {}
    return {"init_from": _open(recipe).record | ({} if recipe.train.init_weights else {"init_weights": False})}


# -- the weights -------------------------------------------------------------------------------
def load_weights(module: nn.Module, recipe: Recipe) -> None:
    """Copy the source's weights into `module` (a `TrainModule`) in place; one stderr line says
    what was loaded and what starts fresh."""
    spec, where = recipe.train.init_from, f"{recipe.path}: [train] init_from {recipe.train.init_from}"
    source = _open(recipe).load()
    target = module.state_dict(keep_vars=True)
    aliases: dict[int, list[str]] = {}
    for name, tensor in target.items():  # tied weights: one tensor under several names
        aliases.setdefault(id(tensor), []).append(base_name(name))
    loaded, fresh = 0, []
    with torch.no_grad():
        for name, tensor in target.items():
            src = next((source[n] for n in [base_name(name), *aliases[id(tensor)]] if n in source), None)
            if src is None:
                if is_adapter(name) or name.startswith("head."):
                    fresh.append(name)
                    continue
                raise UserError(f"{where}: the source has no parameter {base_name(name)!r} "
                                f"(a model of another shape; it has {len(source)} tensors)")
            if src.is_floating_point() and not bool(torch.isfinite(src).all()):
                raise UserError(f"{where}: the source's tensor {base_name(name)!r} has non-finite values (NaN or infinity)")
            tensor.copy_(_fit(src, tensor, base_name(name), where))
            loaded += 1
    unused = sorted(set(source) - {base_name(n) for n in target})
    note = f", {len(fresh)} new ({', '.join(fresh[:3])}{' ...' if len(fresh) > 3 else ''})" if fresh else ""
    note += f", {len(unused)} of the source's unused ({', '.join(unused[:3])})" if unused else ""
    print(f"seqmodel: init_from {spec}: {loaded} tensors loaded{note}", file=sys.stderr)


def _fit(src: Tensor, dst: Tensor, name: str, where: str) -> Tensor:
    """`src` as `dst`'s shape: equal, or a position table cut to fewer rows; else a one-line error."""
    if src.shape == dst.shape:
        return src
    if name.startswith(POSITION_TABLES) and src.dim() == 2 and src.shape[1] == dst.shape[1] and src.shape[0] > dst.shape[0]:
        return src[: dst.shape[0]]
    raise UserError(f"{where}: parameter {name!r} has shape {tuple(src.shape)} in the source, "
                    f"{tuple(dst.shape)} in this model (a [model] key or tokenizer that differs from the source's)")

