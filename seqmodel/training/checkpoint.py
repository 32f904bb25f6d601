"""Crash-safe checkpoints: written under a temporary name, fsynced, then renamed into place.

Layout: ``RUN/checkpoints/step_0000500/{model.safetensors, optimizer.pt, state.json}`` and
``RUN/checkpoints/latest`` naming the newest complete one. A checkpoint directory without its
``state.json`` (written last) is never used; one with non-finite weights is never written.
Weights are safetensors; the optimizer state holds only tensors and numbers, is read back with
``torch.load(weights_only=True)`` and checked against the model before the optimizer sees it
(a state tensor of the wrong shape would corrupt memory inside the fused AdamW kernel).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from seqmodel.errors import UserError, cut
from seqmodel.files import fsync_dir, write_atomic

KEEP = 2
NAME = re.compile(r"step_(\d{7,})")
BEST = "best"  # the checkpoint `[train] keep_best` keeps
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # AdamW's per-parameter tensors


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding a NaN or an infinity, or None."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def save(run_dir: Path, step: int, model: nn.Module, optimizer_state: dict, state: dict,
         weights: dict | None = None) -> Path:
    """Write checkpoint `step` atomically and point ``latest`` at it; keep the newest few.

    `weights` is a gathered full state dict (FSDP); by default the model's own tensors are saved
    (tied weights stored once). Non-finite weights and a failed write (a full disk) are one-line
    errors, and the partial checkpoint is removed.
    """
    bad = first_nonfinite(weights if weights is not None else model.state_dict())
    if bad is not None:
        raise UserError(f"step {step}: weight {bad} is not finite; no checkpoint written")
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
        write_atomic(tmp / "state.json", json.dumps({**state, "step": step}, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        write_atomic(root / "latest", final.name)
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save and safetensors report I/O as these
        shutil.rmtree(tmp, ignore_errors=True)
        why = err.strerror if isinstance(err, OSError) and err.strerror else cut((str(err) or repr(err)).splitlines()[0], 160)
        raise UserError(f"{root}: cannot write the checkpoint of step {step}: {why} ({_free(root)}; "
                        "the partial checkpoint was removed)") from None
    except BaseException:  # a second Ctrl-C
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(p for p in root.glob("step_*") if NAME.fullmatch(p.name))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(run_dir: Path, step: int, model: nn.Module, info: dict) -> Path:
    """Write the weights of step `step` as ``checkpoints/best`` (weights and a state.json naming the
    step and the metric; no optimizer state: it is for eval, sample and export, not resume),
    replacing the previous best only once the new one is complete."""
    root = run_dir / "checkpoints"
    final, tmp, old = root / BEST, root / f".best.tmp{os.getpid()}", root / f".best.old{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        write_atomic(tmp / "state.json", json.dumps({**info, "step": step}, indent=1))
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        fsync_dir(root)
    except (OSError, RuntimeError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{root}: cannot write the best checkpoint (step {step}): {cut(err, 160)} ({_free(root)})") from None
    return final


def named(run_dir: Path, which: str) -> Path | None:
    """A run's checkpoint by name: "latest", "best" or "step_N" (None when it does not exist)."""
    if which == "latest":
        return latest(run_dir)
    path = run_dir / "checkpoints" / (which if which == BEST or NAME.fullmatch(which) else f"step_{int(which):07d}"
                                      if which.isdigit() else which)
    return path if (path / "state.json").is_file() and (path / "model.safetensors").is_file() else None


def _free(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:,.1f} MiB free on its disk"
    except OSError:
        return "free space unknown"


def collect_temporary(run_dir: Path) -> None:
    """Remove what killed runs left half-written (call it holding the run's lock)."""
    root = run_dir / "checkpoints"
    for leftover in (*root.glob(".step_*.tmp*"), *root.glob(".latest.tmp*"), *root.glob(".best.*"),
                     *run_dir.glob(".*.tmp[0-9]*")):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def discard(run_dir: Path, step: int) -> None:
    """Set checkpoint `step` aside as ``step_N.diverged`` (its weights gave a non-finite loss), so
    `latest` falls back to the one before it."""
    root = run_dir / "checkpoints"
    bad = root / f"step_{step:07d}"
    if not bad.is_dir():
        return
    aside = bad.with_name(bad.name + ".diverged")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(bad, aside)
    before = latest(run_dir)
    if before is not None:
        write_atomic(root / "latest", before.name)
    else:
        (root / "latest").unlink(missing_ok=True)


def step_of(ckpt: Path) -> int:
    return int(NAME.fullmatch(ckpt.name).group(1))


def _pointed(root: Path) -> Path | None:
    """The checkpoint ``latest`` names, if it is a well-formed name of a complete checkpoint."""
    if not (root / "latest").is_file():  # a FIFO there would block the read
        return None
    try:
        with open(root / "latest", "rb") as f:
            name = f.read(64).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    cand = root / name
    return cand if NAME.fullmatch(name) and (cand / "state.json").is_file() else None


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None. A damaged ``latest`` pointer is
    ignored: the newest complete ``step_*`` directory is used instead."""
    root = run_dir / "checkpoints"
    pointed = _pointed(root)
    if pointed is not None:
        return pointed
    complete = [p for p in sorted(root.glob("step_*")) if NAME.fullmatch(p.name) and (p / "state.json").is_file()]
    return complete[-1] if complete else None


def any_started(run_dir: Path) -> bool:
    """Whether the run ever finished writing a checkpoint directory (complete or since damaged)."""
    root = run_dir / "checkpoints"
    return (root / "latest").exists() or any(NAME.fullmatch(p.name) for p in root.glob("step_*"))


def _check_state(state, path: Path, step: int) -> dict:
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    problem = None
    if not isinstance(state, dict):
        problem = f"expected a JSON object, got {type(state).__name__}"
    elif state.get("step") != step or not isinstance(state.get("step"), int) or isinstance(state.get("step"), bool):
        problem = f"'step' must be {step} (the checkpoint's step), got {cut(repr(state.get('step')))}"
    elif not isinstance(state.get("history", []), list) or not all(
            isinstance(r, dict) and isinstance(r.get("step"), int) and all(number(v) for v in r.values())
            for r in state.get("history", [])):
        problem = "'history' must be a list of records with an integer 'step' and numbers"
    elif not isinstance(state.get("window", []), list) or not all(number(x) for x in state.get("window", [])):
        problem = "'window' must be a list of numbers"
    elif "pending" in state and not (isinstance(state["pending"], dict) and state["pending"].get("step") == step
                                     and all(number(v) for v in state["pending"].values())):
        problem = f"'pending' must be a record of step {step}"
    if problem:
        raise UserError(f"{path}: damaged checkpoint state: {problem}")
    return state


def read_state(ckpt: Path) -> dict:
    """A checkpoint's state.json, checked: a step checkpoint's (what resume needs) or the best
    one's (its step and metric; `save_best`)."""
    path = ckpt / "state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserError(f"{path}: unreadable checkpoint state: {cut(err, 160)}") from None
    if ckpt.name == BEST:
        step = state.get("step") if isinstance(state, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise UserError(f"{path}: damaged checkpoint state: 'step' must be the step the best weights are of")
        return state
    if NAME.fullmatch(ckpt.name) is None:
        raise UserError(f"{ckpt}: not a checkpoint a run keeps (checkpoints/step_N or checkpoints/{BEST})")
    return _check_state(state, path, step_of(ckpt))


def load_weights(model: nn.Module, ckpt: Path) -> None:
    """Load a checkpoint's weights, refusing any tensor whose name, shape or dtype differs from
    the model's (never a silent cast) and non-finite weights."""
    path = ckpt / "model.safetensors"
    try:
        saved = load_file(str(path))
    except Exception as err:  # safetensors raises several kinds for a damaged file
        raise UserError(f"{path}: cannot load weights: {cut(err, 160)}") from None
    own = model.state_dict()
    unexpected = [k for k in saved if k not in own]
    storage = {own[k].data_ptr(): k for k in saved if k in own}
    missing = [k for k, t in own.items() if k not in saved and t.data_ptr() not in storage]  # tied tensors: stored once
    if unexpected or missing:
        raise UserError(f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, t in saved.items():
        if t.dtype != own[k].dtype or t.shape != own[k].shape:
            raise UserError(f"{path}: {k} is {_described(t)}, the model's is {_described(own[k])}")
    bad = first_nonfinite(saved)
    if bad is not None:
        raise UserError(f"{path}: weight {bad} is not finite (the run diverged before this checkpoint)")
    model.load_state_dict(saved, strict=False)


def _described(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


def _check_optimizer(sd, params: dict[str, torch.Tensor], groups: int, path: Path) -> None:
    """Every state tensor of `sd` against its parameter: one-line error naming the first bad one."""
    def fail(problem: str):
        raise UserError(f"{path}: damaged optimizer state: {problem}")

    if not isinstance(sd, dict) or not isinstance(sd.get("state"), dict) or not isinstance(sd.get("param_groups"), list):
        fail(f"expected a dict with 'state' and 'param_groups', got {type(sd).__name__}")
    listed = []
    for g in sd["param_groups"]:
        if not isinstance(g, dict) or not isinstance(g.get("params"), list):
            fail("each of 'param_groups' must be a dict with a list of 'params'")
        listed += g["params"]
    if len(sd["param_groups"]) != groups or sorted(map(str, listed)) != sorted(params):
        fail("its parameter groups do not list the model's parameters")
    if not sd["state"]:
        fail("it holds no AdamW moments (resuming would silently restart them)")
    for name, entry in sd["state"].items():
        if name not in params or not isinstance(entry, dict):
            fail(f"state for unknown parameter {cut(repr(name))}")
        p = params[name]
        for key, value in entry.items():
            tensor = isinstance(value, torch.Tensor)
            if key == "step":
                number = isinstance(value, (int, float)) or tensor and value.numel() == 1 and value.is_floating_point()
                if not number or not float(value) >= 0:
                    fail(f"{name}: 'step' must be a non-negative number")
            elif key in MOMENTS:
                if not tensor or value.shape != p.shape or value.dtype != p.dtype:
                    got = _described(value) if tensor else type(value).__name__
                    fail(f"{name}: {key} is {got}, the parameter is {_described(p)}")
            else:
                fail(f"{name}: unexpected entry {cut(repr(key))}")


def load_optimizer(ckpt: Path, module: nn.Module, groups: int) -> dict:
    """The optimizer state of a checkpoint (FQN-keyed, as `get_optimizer_state_dict` writes it),
    checked against `module`'s trainable parameters and the optimizer's number of groups."""
    path = ckpt / "optimizer.pt"
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refuses code and damaged files with many kinds of error
        raise UserError(f"{path}: cannot load optimizer state: {cut(err, 160)}") from None
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    _check_optimizer(sd, params, groups, path)
    return sd
