"""Crash-safe checkpoints: written under a temporary name, fsynced, then renamed into place.

Layout: ``RUN/checkpoints/step_0000500/{model.safetensors, optimizer.pt, state.json}`` and
``RUN/checkpoints/latest`` naming the newest complete one. A checkpoint directory without its
``state.json`` (written last) is never used. Weights are safetensors; the optimizer state holds
only tensors and numbers and is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from .errors import UserError

KEEP = 2


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(run_dir: Path, step: int, model: nn.Module, optimizer_state: dict, state: dict,
         weights: dict | None = None) -> Path:
    """Write checkpoint `step` atomically and point ``latest`` at it; keep the newest few.

    `weights` is a gathered full state dict (FSDP); by default the model's own tensors are saved
    (tied weights stored once).
    """
    root = run_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".step_{step:07d}.tmp{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if weights is None:
            save_model(model, str(tmp / "model.safetensors"))
        else:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        _write_text(tmp / "state.json", json.dumps({**state, "step": step}, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        _write_text(root / "latest", final.name)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{root}: cannot write checkpoint for step {step}: {err.strerror or err}") from None
    for old in sorted(root.glob("step_*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "state.json").is_file():
            return cand
    complete = [p for p in sorted(root.glob("step_*")) if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def read_state(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{ckpt / 'state.json'}: unreadable checkpoint state: {err}") from None


def load_weights(model: nn.Module, ckpt: Path) -> None:
    path = ckpt / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as err:
        raise UserError(f"{path}: cannot load weights: {err}") from None
    if unexpected or missing:
        raise UserError(f"{path}: weights do not match the model (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")


def load_optimizer(ckpt: Path) -> dict:
    path = ckpt / "optimizer.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: cannot load optimizer state: {err}") from None
