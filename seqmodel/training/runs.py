"""`seqmodel runs [DIR]`: the run directories under a folder, one row each.

Reads only what every run directory holds (recipe.json, run.json, metrics.jsonl, the latest
checkpoint's step), so it is quick and never loads a model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from seqmodel.training import checkpoint


def _metrics(run: Path) -> list[dict]:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict)]


def describe(run: Path) -> dict | None:
    """One run directory's row, or None if `run` is not a run directory."""
    try:
        recipe = json.loads((run / "recipe.json").read_text())
        record = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    except (OSError, ValueError):
        return None
    if not isinstance(recipe, dict):
        return None
    rows = _metrics(run)
    ckpt = checkpoint.latest(run)
    step = 0
    if ckpt is not None:
        try:
            step = int(json.loads((ckpt / "state.json").read_text()).get("step", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            step = 0
    val = [r["val_loss"] for r in rows if isinstance(r.get("val_loss"), (int, float))]
    steps = recipe.get("train", {}).get("steps")
    return {"run": str(run), "recipe": record.get("recipe", ""), "task": recipe.get("task", {}).get("kind", "?"),
            "arch": recipe.get("model", {}).get("arch", "?"), "step": step, "steps": steps,
            "best_val_loss": min(val) if val else None, "last": {k: v for k, v in (rows[-1] if rows else {}).items()
                                                                 if k not in ("step", "lr", "tokens_per_s")},
            "elapsed_s": rows[-1].get("elapsed_s") if rows else None,
            "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime((run / "recipe.json").stat().st_mtime))}


def table(root: Path) -> list[dict]:
    """Rows of every run directory directly under `root` (and `root` itself if it is one)."""
    candidates = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    return [row for row in map(describe, candidates) if row is not None]


def format_rows(rows: list[dict]) -> str:
    head = f"{'run':28} {'task':9} {'arch':15} {'step':>11} {'best val':>9} {'time':>8}  modified"
    lines = [head]
    for r in rows:
        steps = f"{r['step']}/{r['steps']}" if r["steps"] else str(r["step"])
        best = f"{r['best_val_loss']:.4f}" if r["best_val_loss"] is not None else "-"
        minutes = f"{r['elapsed_s'] / 60:.1f} min" if r["elapsed_s"] else "-"
        lines.append(f"{Path(r['run']).name[:28]:28} {r['task']:9} {r['arch']:15} {steps:>11} {best:>9} {minutes:>8}  {r['modified']}")
    return "\n".join(lines)
