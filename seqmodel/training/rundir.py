"""Reading a run directory's own records defensively: a damaged or hand-edited file is a one-line
error naming it, never a traceback from deep inside the code that uses it.

A run directory holds everything needed to rebuild its pipeline (`save_pipeline`,
`load_pipeline`): the resolved recipe, each tokenizer's state and the task's. `saved_recipe` checks
the shape of ``recipe.json`` before it is parsed (the values themselves are validated by
`parse_recipe`); `saved_environment` reads ``run.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqmodel.capabilities import can
from seqmodel.data.mixture import pipeline_for
from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError, cut
from seqmodel.files import write_atomic
from seqmodel.recipe.schema import Recipe, apply_overrides, parse_recipe

LARGEST = 16 * 2**20  # bytes: a run's JSON records are a few kB


def read_json(path: Path, what: str):
    """The JSON value in `path`; a missing, huge, non-UTF-8 or malformed file is a `UserError`."""
    try:
        if path.stat().st_size > LARGEST:
            raise UserError(f"{path}: damaged {what}: larger than {LARGEST // 2**20} MiB")
        return json.loads(path.read_text(encoding="utf-8"))
    except UserError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserError(f"{path}: damaged {what}: {cut(err, 160)}") from None


def saved_recipe(run_dir: Path) -> dict:
    """The resolved recipe of a run, checked to be a table of tables (``tokenizers``: one table
    per modality), as `load_pipeline` expects."""
    path = Path(run_dir) / "recipe.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a seqmodel run directory (no recipe.json)")
    raw = read_json(path, "run recipe")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: damaged run recipe: expected a JSON object of tables, got {type(raw).__name__}")
    for key, table in raw.items():
        if not isinstance(table, dict):
            raise UserError(f"{path}: damaged run recipe: [{cut(key)}] must be a table, got {type(table).__name__}")
    for mod, table in raw.get("tokenizers", {}).items():
        if not isinstance(table, dict):
            raise UserError(f"{path}: damaged run recipe: [tokenizers.{cut(mod)}] must be a table, got {type(table).__name__}")
    return raw


def is_run_directory(path) -> bool:
    return Path(path).is_dir() and (Path(path) / "recipe.json").is_file()


def recorded_recipe(run_dir: Path, overrides: list[str] = ()):
    """The recipe a run ran with (its recipe.json, overrides included), with further ``--set``
    `overrides` applied: what `seqmodel run --resume RUN_DIR` continues with."""
    raw = saved_recipe(run_dir)
    if "tokenizers" in raw:
        raw["tokenizers"] = {m: dict(t) | {"modality": m} for m, t in raw["tokenizers"].items()}
    return parse_recipe(apply_overrides(raw, list(overrides)), str(Path(run_dir) / "recipe.json"))


def saved_environment(run_dir: Path) -> dict | None:
    """``run.json`` (versions, plugins, data fingerprint), or None for a run without one."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return None
    env = read_json(path, "run record")
    plugins = env.get("plugins", []) if isinstance(env, dict) else None
    if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
        raise UserError(f"{path}: damaged run record: expected an object with a list of 'plugins'")
    if not isinstance(env.get("data_fingerprint", ""), (str, type(None))):
        raise UserError(f"{path}: damaged run record: 'data_fingerprint' must be a string")
    return env


def save_pipeline(pipe: Pipeline, run_dir: Path) -> None:
    """Write the resolved recipe, tokenizer and task state into the run directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "recipe.json", json.dumps(pipe.recipe.resolved(), indent=2))
    for m, tok in pipe.tokenizers.items():
        d = run_dir / "tokenizers" / m
        d.mkdir(parents=True, exist_ok=True)
        tok.save(d)
    if can(pipe.task, "state"):
        d = run_dir / "task"
        d.mkdir(exist_ok=True)
        pipe.task.save(d)


def load_pipeline(run_dir: str | Path, recipe: Recipe | None = None) -> Pipeline:
    """Rebuild the pipeline of a run directory: its saved recipe (or `recipe`, for a resume that
    changes some keys) with the run's tokenizer and task state loaded, not refitted."""
    run_dir = Path(run_dir)
    pipe = pipeline_for(recipe if recipe is not None else recorded_recipe(run_dir))
    for m in pipe.tokenizers:
        if not (run_dir / "tokenizers" / m).is_dir():
            raise UserError(f"{run_dir}: the run has no tokenizer state for modality {m!r}")
    task = run_dir / "task"
    pipe.load({m: run_dir / "tokenizers" / m for m in pipe.tokenizers}, task if task.is_dir() else None)
    return pipe
