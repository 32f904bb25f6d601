"""Will a recipe fit this machine? Parameters and training memory estimated from the config (and
the tokenizers' vocabularies) before anything is allocated, so that `model.layers = 10**6` or a
context of 10**9 is a one-line error naming the key, not minutes of swapping and an OOM kill.

The estimate is a lower bound -- weights, gradients and the two AdamW moments (16 bytes a
parameter) plus the activations every block keeps for the backward pass -- so a recipe is only
refused when even that cannot fit the machine's RAM (or the GPU's memory). Loop counts that
would run for days (`steps`, `eval_batches`, `grad_accum`, `max_new_tokens`) only get a warning.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from seqmodel.errors import UserError
from seqmodel.model.config import mlp_hidden
from seqmodel.plugin import ModalitySpec

BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
SAVED_PER_TOKEN = 6  # vectors of width d_model a block keeps for backward, besides its MLP's 2 * mlp_ratio
HUGE = {"train.steps": 10**7, "train.eval_batches": 10**5, "train.grad_accum": 10**4, "sample.max_new_tokens": 10**6}


@dataclass
class Estimate:
    """Parameters and bytes of one training process, split by what drives them."""

    blocks: int  # parameters in the transformer blocks (driven by layers and d_model)
    tables: int  # embedding and output tables (vocabularies, widths)
    positions: int  # position tables (driven by context)
    activation_bytes: int

    @property
    def parameters(self) -> int:
        return self.blocks + self.tables + self.positions

    @property
    def bytes(self) -> int:
        return self.parameters * BYTES_PER_PARAMETER + self.activation_bytes


def attention_parameters(model) -> int:
    """One attention layer without biases: q and proj (d^2 each), k and v (d by the kv width), qk norms."""
    d, head = model.d_model, model.d_model // model.heads
    kv = (model.kv_heads or model.heads) * head
    return 2 * d * d + 2 * d * kv + (2 * head if model.qk_norm else 0)


def block_parameters(model, cross: bool) -> int:
    """One block without biases: attention, MLP, their norms, and cross-attention with its norm."""
    d, hidden = model.d_model, mlp_hidden(model)
    mlp = d * hidden * (3 if model.mlp == "swiglu" else 2)
    return attention_parameters(model) + mlp + 2 * d + ((attention_parameters(model) + d) if cross else 0)


def estimate(model, train, specs: list[ModalitySpec] = (), outputs: tuple[str, ...] = (), world: int = 1) -> Estimate:
    """A lower bound of what training `model` (a ModelConfig) with `train` (a TrainConfig) needs
    in each of `world` processes; without `specs` the modalities' tables are left out."""
    d, hidden = model.d_model, mlp_hidden(model)
    decoder_cross = model.arch == "encoder_decoder"
    layers = model.layers + ((model.encoder_layers or model.layers) if decoder_cross else 0)
    blocks = model.layers * block_parameters(model, decoder_cross) + d * (2 if model.embed_norm else 1)
    if decoder_cross:
        blocks += (model.encoder_layers or model.layers) * block_parameters(model, False) + d
    tables = positions = 0
    for s in specs:
        tables += s.vocab_size * d if s.discrete else (s.width + 1) * d
        if s.name in outputs and (not s.discrete or not model.tie_embeddings):
            tables += d * (s.vocab_size or s.width)
        positions += sum(s.position_tables(model.context)) * d
    tables += len(specs) * d
    per_rank = max(1, train.batch_size // max(1, world))
    width = 2 if train.precision in ("bf16", "fp16") else 4
    activations = per_rank * model.context * layers * (SAVED_PER_TOKEN * d + 2 * hidden) * width
    return Estimate(blocks, tables, positions, activations)


def memory_limit(train) -> tuple[int, str]:
    """(bytes, what) a training process may use: the GPU's memory or the machine's RAM."""
    import torch

    if train.device in ("cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, f"the GPU ({torch.cuda.get_device_name(0)})"
    import psutil

    return psutil.virtual_memory().total, "this machine's RAM"


def gigabytes(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**40 * 10 else f"{n / 2**40:,.0f} TiB"


def count(n: float) -> str:
    return f"{n / 1e9:,.1f} G" if n >= 1e8 else f"{n / 1e6:,.1f} M"


def culprit(recipe, est: Estimate) -> str:
    """The key that makes the estimate large: the biggest term, then its largest setting."""
    m, t = recipe.model, recipe.train
    if est.activation_bytes > est.parameters * BYTES_PER_PARAMETER:
        candidates = [("train", "batch_size", t.batch_size, 12), ("model", "context", m.context, 256),
                      ("model", "layers", m.layers, 4), ("model", "d_model", m.d_model, 128)]
    elif est.positions >= max(est.blocks, est.tables):
        candidates = [("model", "context", m.context, 256)]
    elif est.blocks >= est.tables:
        candidates = [("model", "layers", m.layers, 4), ("model", "d_model", m.d_model, 128),
                      ("model", "mlp_ratio", m.mlp_ratio, 4.0)]
    else:
        return f"[model] d_model = {m.d_model} with the tokenizers' vocabularies"
    table, key, value, _ = max(candidates, key=lambda c: c[2] / c[3])
    return f"[{table}] {key} = {value}"


def check_fits(recipe, specs: list[ModalitySpec] = (), outputs: tuple[str, ...] = (), world: int = 1) -> Estimate:
    """Refuse (one-line `UserError` naming the key) a recipe whose training cannot fit in memory."""
    est = estimate(recipe.model, recipe.train, specs, outputs, world)
    limit, what = memory_limit(recipe.train)
    shards = world if recipe.train.distributed == "fsdp" else 1
    need = est.parameters * BYTES_PER_PARAMETER // shards + est.activation_bytes
    if what == "this machine's RAM":
        need *= world  # every process on this machine
    if need > limit:
        procs = f" in each of {world} processes" if world > 1 else ""
        raise UserError(f"{recipe.path}: {culprit(recipe, est)}: training needs at least {gigabytes(need)} "
                        f"({count(est.parameters)} parameters and their gradients and AdamW moments, plus "
                        f"activations{procs}), more than {what} ({gigabytes(limit)})")
    return est


def warnings_for(recipe) -> list[str]:
    """Settings that will run for a very long time, or oversubscribe the CPU."""
    out = []
    for name, most in HUGE.items():
        table, key = name.split(".")
        value = getattr(getattr(recipe, table), key)
        if value > most:
            out.append(f"[{table}] {key} = {value:,} is more than {most:,}: this will run for a very long time")
    cpus = os.cpu_count() or 1
    if recipe.train.threads > cpus:
        out.append(f"[train] threads = {recipe.train.threads} is more than this machine's {cpus} CPUs")
    return [f"seqmodel: warning: {recipe.path}: {w}" for w in out]


def check_machine(train) -> bool:
    """Refuse a device or precision this machine lacks; True when training runs on the CPU."""
    import torch

    cpu = train.device == "cpu" or (train.device == "auto" and not torch.cuda.is_available())
    if train.device == "cuda" and not torch.cuda.is_available():
        raise UserError("[train] device: 'cuda' requested but no GPU is available")
    if train.precision == "fp16" and cpu:
        raise UserError("[train] precision: fp16 needs a GPU; use bf16 or fp32 on CPU")
    if train.distributed == "fsdp" and cpu:
        raise UserError("[train] distributed: fsdp needs CUDA GPUs (accelerate shards only on GPUs); use ddp on CPU")
    return cpu


def check_split(train, world: int) -> None:
    if train.batch_size % world:
        raise UserError(f"[train] batch_size: {train.batch_size} does not split over {world} processes")


def preflight(recipe, world: int = 1, warn: bool = True) -> None:
    """What `check`, `run` and the multi-process launcher do before fitting anything: the device,
    the batch split, the memory bound without the vocabularies (known only after fitting), and
    the warnings."""
    try:
        check_machine(recipe.train)
        check_split(recipe.train, world)
    except UserError as err:
        raise UserError(f"{recipe.path}: {err}") from None
    check_fits(recipe, world=world)
    for line in warnings_for(recipe) if warn else ():
        print(line, file=sys.stderr)
