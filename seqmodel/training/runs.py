"""`seqmodel runs [DIR...]`: the run directories under folders, one row each; `--plot` overlays
their curves of one metric in one picture.

Reads only what every run directory holds (recipe.json, run.json, metrics.jsonl, the latest
checkpoint's step), so it is quick and never loads a model. A run directory it cannot read (a
file that is not JSON, a folder where a file belongs, a file too large to be a run's record) is
still a row, one that says what is wrong: one damaged run never hides the others.
"""

from __future__ import annotations

import json
import math
import os
import stat
import time
from pathlib import Path

from seqmodel.errors import UserError, cut, shown
from seqmodel.plots import figure
from seqmodel.training import checkpoint

LARGEST_RECORD = 16 * 2**20
"""Bytes of recipe.json, run.json or a checkpoint's state.json read; a larger one is not a run's record."""
LARGEST_METRICS = 256 * 2**20
"""Bytes of metrics.jsonl read (a million log lines is about 200 MB)."""
NOT_TASK_METRICS = ("step", "lr", "tokens_per_s", "elapsed_s", "train_loss", "val_loss")
"""Keys of a metrics.jsonl record that the training loop writes; the others are the task's."""


class Unreadable(Exception):
    """What is wrong with one file of a run directory, in a few words naming it."""


def number(value) -> bool:
    """A finite JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def regular_file(path: Path, limit: int) -> int:
    """The size of `path`, a regular file of at most `limit` bytes (a FIFO would block a read)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise Unreadable(f"{path.name}: missing") from None
    except OSError as err:
        raise Unreadable(f"{path.name}: {err.strerror or err}") from None
    if stat.S_ISDIR(info.st_mode):
        raise Unreadable(f"{path.name} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise Unreadable(f"{path.name} is not a regular file")
    if info.st_size > limit:
        raise Unreadable(f"{path.name} has {info.st_size / 2**20:,.0f} MB, more than a run's record "
                         f"({limit / 2**20:,.0f} MB at most)")
    return info.st_size


def read_json(path: Path) -> object:
    """A small JSON file of a run directory."""
    regular_file(path, LARGEST_RECORD)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(LARGEST_RECORD + 1))
    except OSError as err:
        raise Unreadable(f"{path.name}: {err.strerror or err}") from None
    except (ValueError, RecursionError):
        raise Unreadable(f"{path.name}: not valid JSON") from None


def metrics(run: Path) -> list[dict]:
    """The records of metrics.jsonl with an integer step (a line cut short by a crash is skipped);
    none for a run that has not logged yet."""
    path = run / "metrics.jsonl"
    if not os.path.lexists(path):
        return []
    regular_file(path, LARGEST_METRICS)
    rows = []
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
                    rows.append(row)
    except OSError as err:
        raise Unreadable(f"metrics.jsonl: {err.strerror or err}") from None
    return rows


def text(tables: object, *keys: str) -> str | None:
    """``tables[k1][k2]...`` when it is a string, else None."""
    for key in keys:
        tables = tables.get(key) if isinstance(tables, dict) else None
    return tables if isinstance(tables, str) else None


def recipe_columns(run: Path) -> dict:
    """Task, arch and steps from recipe.json."""
    recipe = read_json(run / "recipe.json")
    if not isinstance(recipe, dict):
        raise Unreadable("recipe.json: not a recipe (a JSON object)")
    steps = recipe.get("train", {}).get("steps") if isinstance(recipe.get("train"), dict) else None
    task = text(recipe, "task", "kind") or ("mixture" if isinstance(recipe.get("mixture"), dict) else "?")
    return {"task": cut(task, 20), "arch": cut(text(recipe, "model", "arch") or "?", 20),
            "steps": steps if isinstance(steps, int) and not isinstance(steps, bool) else None}


def record_columns(run: Path) -> dict:
    """The recipe file the run came from, as run.json records it."""
    if not os.path.lexists(run / "run.json"):
        return {}
    return {"recipe": text(read_json(run / "run.json"), "recipe") or ""}


def step_columns(run: Path) -> dict:
    """The step of the newest complete checkpoint (0: none yet)."""
    if os.path.lexists(run / "checkpoints") and not (run / "checkpoints").is_dir():
        raise Unreadable("checkpoints is not a folder")
    ckpt = checkpoint.latest(run)
    if ckpt is None:
        return {"step": 0}
    state = read_json(ckpt / "state.json")
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise Unreadable(f"checkpoints/{ckpt.name}/state.json: no step")
    return {"step": step}


def metrics_columns(run: Path) -> dict:
    """The best validation loss, the task's metrics of the last evaluation, the training time so far."""
    rows = metrics(run)
    evaluations = [r for r in rows if number(r.get("val_loss"))]
    last = evaluations[-1] if evaluations else {}
    elapsed = rows[-1].get("elapsed_s") if rows else None
    return {"best_val_loss": min(r["val_loss"] for r in evaluations) if evaluations else None,
            "metrics": {k: v for k, v in last.items() if k not in NOT_TASK_METRICS and number(v)},
            "last": {k: v for k, v in (rows[-1] if rows else {}).items() if k not in ("step", "lr", "tokens_per_s") and number(v)},
            "elapsed_s": elapsed if number(elapsed) else None}


def modified(path: Path) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    except (OSError, OverflowError, ValueError):
        return "?"


def describe(run: Path) -> dict | None:
    """One run directory's row, or None if `run` is not one (no recipe.json). A part that cannot
    be read leaves its columns empty and says why in "problem"."""
    if not os.path.lexists(run / "recipe.json"):
        return None
    row = {"run": str(run), "recipe": "", "task": "?", "arch": "?", "step": None, "steps": None, "best_val_loss": None,
           "metrics": {}, "last": {}, "elapsed_s": None, "modified": modified(run / "recipe.json"), "problem": None}
    problems = []
    for columns in (recipe_columns, record_columns, step_columns, metrics_columns):
        try:
            row.update(columns(run))
        except Unreadable as err:
            problems.append(str(err))
    row["problem"] = "; ".join(problems) or None
    return row


def candidates(root: Path) -> list[Path]:
    """`root` and the folders directly in it."""
    if not root.exists():
        raise UserError(f"{shown(str(root))}: no such folder (seqmodel runs DIR: a folder of run directories, or one)")
    if not root.is_dir():
        raise UserError(f"{shown(str(root))}: not a folder (seqmodel runs DIR: a folder of run directories, or one)")
    try:
        return [root] + sorted(p for p in root.iterdir() if p.is_dir())
    except OSError as err:
        raise UserError(f"{shown(str(root))}: cannot list the folder: {err.strerror or err}") from None


def table(*roots: Path) -> list[dict]:
    """Rows of every run directory directly under each of `roots` (and each root itself if it is one)."""
    seen, rows = set(), []
    for root in roots:
        for path in candidates(Path(root)):
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            row = describe(path)
            if row is not None:
                rows.append(row)
    return rows


def printable(name: str) -> str:
    """A file name as text any terminal prints (undecodable bytes escaped)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def format_metrics(values: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def format_rows(rows: list[dict]) -> str:
    head = f"{'run':28} {'task':9} {'arch':15} {'step':>11} {'best val':>9} {'time':>8}  {'modified':16}  last evaluation"
    lines = [head]
    for r in rows:
        name = printable(Path(r["run"]).name)[:28]
        steps = "-" if r["step"] is None else f"{r['step']}/{r['steps']}" if r["steps"] else str(r["step"])
        best = f"{r['best_val_loss']:.4f}" if r["best_val_loss"] is not None else "-"
        minutes = "-" if not r["elapsed_s"] else f"{r['elapsed_s']:.1f} s" if r["elapsed_s"] < 60 else f"{r['elapsed_s'] / 60:.1f} min"
        tail = printable(f"unreadable: {r['problem']}" if r["problem"] else format_metrics(r["metrics"]) or "-")
        lines.append(f"{name:28} {printable(r['task']):9} {printable(r['arch']):15} {steps:>11} {best:>9} {minutes:>8}  "
                     f"{r['modified']:16}  {tail}")
    return "\n".join(lines)


def curves(rows: list[dict], metric: str) -> dict[str, list[tuple[int, float]]]:
    """Run label -> (step, value) of `metric` in its metrics.jsonl, for the runs that report it."""
    out = {}
    for r in rows:
        try:
            points = [(m["step"], m[metric]) for m in metrics(Path(r["run"])) if number(m.get(metric))]
        except Unreadable:
            continue
        if points:
            name = printable(Path(r["run"]).name)
            out[name if name not in out else printable(r["run"])] = points
    return out


def reported(rows: list[dict]) -> list[str]:
    """The metrics any of the runs logged, for messages."""
    names = set()
    for r in rows:
        try:
            names.update(k for m in metrics(Path(r["run"])) for k, v in m.items() if number(v) and k != "step")
        except Unreadable:
            continue
    return sorted(names)


def plot(rows: list[dict], metric: str, path: Path) -> list[str]:
    """Draw every run's curve of `metric` against step in one picture; the runs drawn."""
    lines = curves(rows, metric)
    if not lines:
        have = reported(rows)
        raise UserError(f"--metric {shown(metric)}: none of the {len(rows)} run(s) logged it"
                        + (f" (they logged: {', '.join(have)})" if have else " (no run has metrics.jsonl records yet)"))
    try:
        with figure(path, size=(8, 4.5)) as (fig, ax):
            for label, points in lines.items():
                ax.plot(*zip(*points), "o-" if len(points) < 30 else "-", label=label, lw=1.3, ms=3)
            ax.set(xlabel="step", ylabel=metric, title=f"{metric} of {len(lines)} run(s)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    except OSError as err:
        raise UserError(f"--plot {shown(str(path))}: cannot write the picture: {err.strerror or err}") from None
    return list(lines)
