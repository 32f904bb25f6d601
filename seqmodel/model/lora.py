"""LoRA fine-tuning through HuggingFace `peft`: low-rank adapters on the core's linear layers.

`peft.inject_adapter_in_model` wraps every `nn.Linear` of the core whose name ends with one of
`targets` (``qkv`` matches ``decoder.blocks.0.attn.qkv``) in a `peft` LoRA layer, W x + (alpha /
rank) B A x, and freezes every other parameter of the core, so the optimizer (which takes only
parameters that need gradients) sees the adapters and the task's head. Checkpoints hold the whole
model, as every run's do (resume, sample and eval need nothing else); ``RUN/adapter`` holds the
adapters alone in `peft`'s own format (``adapter_model.safetensors``, ``adapter_config.json``);
`merge` folds them into the weights for export.

Reference: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from torch import Tensor, nn

from seqmodel.errors import UserError
from seqmodel.model.config import LoRAConfig

BASE = ".base_layer"
ADAPTER_KEYS = (".lora_A.", ".lora_B.")


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("[train] lora needs the `peft` package: pip install 'seqmodel[export]' (or pip install peft)") from None
    return peft


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def wrap(core: nn.Module, cfg: LoRAConfig, where: str = "<recipe>") -> nn.Module:
    """Inject LoRA adapters into `core` (in place) and freeze its other parameters; `where`
    (the recipe's path) starts error messages."""
    peft = _peft()
    linear = [n for n, m in core.named_modules() if isinstance(m, nn.Linear)]
    for target in cfg.targets:
        if not any(_matches(n, target) for n in linear):
            kinds = sorted({n.rsplit(".", 1)[-1] for n in linear})
            raise UserError(f"{where}: [train] lora targets: {target!r} matches no linear layer of the model "
                            f"(their names end with: {', '.join(kinds)})")
    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.targets))
    return peft.inject_adapter_in_model(config, core)


def is_adapter(name: str) -> bool:
    return any(k in name for k in ADAPTER_KEYS)


def base_name(name: str) -> str:
    """The name a LoRA-wrapped layer's own weight had before wrapping (``qkv.base_layer.weight`` -> ``qkv.weight``)."""
    return name.replace(BASE + ".", ".")


def merge(core: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight and put the plain `nn.Linear` back (in place):
    the model computes what the adapted one did, with the original parameter names."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(n, m) for n, m in core.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in wrapped:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(core.get_submodule(parent) if parent else core, child, layer.get_base_layer())
    for p in core.parameters():
        p.requires_grad_(True)
    return core


def merged_state(state: dict[str, Tensor], cfg: LoRAConfig) -> dict[str, Tensor]:
    """A LoRA run's saved weights with every adapter folded in, under the plain names:
    ``X.weight = X.base_layer.weight + (alpha / rank) B A`` (what `merge` computes), so another
    run can start from what the adapted model computes."""
    out = {}
    for name, tensor in state.items():
        if is_adapter(name):
            continue
        if BASE + ".weight" in name:
            layer = name.removesuffix(BASE + ".weight")
            a, b = (state[f"{layer}.lora_{k}.default.weight"] for k in "AB")
            tensor = tensor + (cfg.alpha / cfg.rank) * (b.float() @ a.float()).to(tensor.dtype)
        out[base_name(name)] = tensor
    return out


def save_adapter(core: nn.Module, cfg: LoRAConfig, directory: Path) -> None:
    """Write the adapters in `peft`'s format (``adapter_model.safetensors``, ``adapter_config.json``),
    replacing the directory atomically."""
    peft = _peft()
    from safetensors.torch import save_file

    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in peft.get_peft_model_state_dict(core).items()}
    save_file(weights, str(tmp / "adapter_model.safetensors"))
    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.targets))
    (tmp / "adapter_config.json").write_text(json.dumps(config.to_dict(), indent=1, default=sorted))
    old = directory.with_name(f".{directory.name}.old{os.getpid()}")
    if directory.exists():
        directory.replace(old)
    tmp.replace(directory)
    shutil.rmtree(old, ignore_errors=True)
