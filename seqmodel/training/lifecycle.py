"""A run directory from start to finish: where a run goes, how a recipe becomes the fitted
pipeline it trains (`assemble`, the one way every command does it), what a run records about
itself (`run.json`, `recipe.json`, `recipe.toml`) and what may change when it resumes.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import accelerate
import torch

from seqmodel import registry
from seqmodel._version import __version__
from seqmodel.data.mixture import pipeline_for
from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError
from seqmodel.files import is_main_process, write_atomic
from seqmodel.recipe.presets import resolve
from seqmodel.recipe.render import recipe_doc
from seqmodel.recipe.schema import Recipe, apply_overrides, load_recipe, parse_recipe
from seqmodel.training import checkpoint, rundir, warm_start


def assemble(recipe: Recipe | None = None, run_dir: Path | None = None, saved: bool = False) -> Pipeline:
    """The one way a recipe becomes a fitted pipeline: what run, resume, check, prepare, mask show,
    eval and the Python API all call.

    Args:
        recipe: the recipe (None with `saved`: the one the run recorded).
        run_dir: the run directory the pipeline belongs to, if any.
        saved: load the run directory's saved tokenizer and task state instead of fitting (a
            resume, eval, sample ...); with `recipe`, that recipe replaces the recorded one.

    Otherwise the recipe first takes its warm-start source's model shape (`[train] init_from`),
    then each tokenizer is fitted on the training split, or loads the source's state.
    """
    if saved:
        return rundir.load_pipeline(run_dir, recipe)
    recipe = warm_start.resolve(recipe)
    pipe = pipeline_for(recipe)
    pipe.fit(warm_start.tokenizer_states(recipe))
    return pipe


def default_run_dir(recipe_path: str | Path, resume: bool) -> Path:
    """runs/<recipe name>, numbered -2, -3 ... for new runs; the newest of them for --resume."""
    stem = Path(recipe_path).stem
    root = Path("runs")
    taken = sorted((p for p in root.glob(f"{stem}*") if p.name == stem or p.name.removeprefix(stem + "-").isdigit()),
                   key=lambda p: int(p.name.removeprefix(stem + "-")) if p.name != stem else 1)
    if resume:
        if not taken:
            raise UserError(f"nothing to resume: no run directory runs/{stem}* (give --out)")
        return taken[-1]
    return root / (stem if not taken else f"{stem}-{len(taken) + 1}")


def data_fingerprint(pipe: Pipeline) -> str:
    """Hash of the source's identity and every tokenizer's saved state (each saved once per
    process, shared with the prepared stores' keys); a mixture's, of its members'."""
    if pipe.members:
        return hashlib.sha256(json.dumps({n: data_fingerprint(p) for n, p in pipe.members.items()}).encode()).hexdigest()
    digest = hashlib.sha256(json.dumps(pipe.source_data.identity, sort_keys=True, default=str).encode())
    for m in sorted(pipe.tokenizers):
        for name, content in pipe.prepared.state_files(m):
            digest.update(f"{m}/{Path(name).name}".encode() + content)
    return digest.hexdigest()


def environment(pipe: Pipeline) -> dict:
    """What a run depends on (written to run.json): versions, plugins and a data fingerprint."""
    recipe = pipe.recipe
    used = recipe.plugins()
    plugins = [{"kind": k, "name": n, "distribution": d, "version": v} for k, n in dict.fromkeys(used)
               for d, v in [registry.plugin_version(k, n)]]
    return {"seqmodel": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version(), "plugins": plugins, "data_fingerprint": data_fingerprint(pipe)}


RESUMABLE = ("train.steps", "train.lr", "train.min_lr", "train.warmup", "train.weight_decay", "train.grad_clip",
             "train.eval_every", "train.eval_batches", "train.log_every", "train.checkpoint_every", "train.threads",
             "train.peer_timeout", "train.log_with", "train.compile", "train.cpu_memory_cache",
             "train.fingerprint_batches", "train.keep_best", "train.best_mode", "sample.*")
"""Recipe keys `--resume` applies when they changed: the schedule, the learning rate (to continue
after divergence), logging, evaluation, checkpoints, CPU threads, the wait for other processes and
sampling. Any other change would make the resumed run a different run; only `--force` applies it."""


def resumable(key: str) -> bool:
    return key in RESUMABLE or f"{key.split('.')[0]}.*" in RESUMABLE


def differences(old, new, path=""):
    """(dotted key, old value, new value) for every setting that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            yield from differences(old.get(k), new.get(k), f"{path}.{k}" if path else k)
    elif old != new:
        yield path, old, new


def _environment_changes(run_dir: Path, pipe: Pipeline) -> list[str]:
    """What changed since run.json was written: plugin versions, the data fingerprint."""
    before = rundir.saved_environment(run_dir)
    if before is None:
        return []
    after = environment(pipe)
    problems = [f"{p.get('kind')} plugin {p.get('name')!r} version changed: {p.get('version')} -> {q['version']}"
                for p, q in zip(before.get("plugins", []), after["plugins"]) if p != q]
    if before.get("data_fingerprint") not in (None, after["data_fingerprint"]):
        problems.append("data fingerprint changed (the source's data or the tokenizer state differ)")
    return problems


def check_resumable(run_dir: Path, recipe: Recipe | None, force: bool = False) -> Pipeline:
    """The pipeline to resume `run_dir` with: the saved one with `recipe`'s values of the
    `RESUMABLE` keys applied. Any other recipe change, a plugin version change or changed data
    is refused with a one-line error; `force` resumes anyway with every value of `recipe`."""
    pipe = assemble(run_dir=run_dir, saved=True)
    changed = list(differences(pipe.recipe.resolved(), recipe.resolved())) if recipe is not None else []
    problems = [f"recipe changed: {k} {old!r} -> {new!r}" for k, old, new in changed if not resumable(k)]
    problems += _environment_changes(run_dir, pipe)
    if problems and not force:
        raise UserError(f"{run_dir}: refusing to resume: {problems[0]}"
                        + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                        + "; --force resumes anyway (what may change on resume: see README, Resuming)")
    if problems and is_main_process():
        print(f"seqmodel: warning: {run_dir}: resuming despite: {'; '.join(problems)}", file=sys.stderr)
    if recipe is None or not changed:
        return pipe
    if force and any(not resumable(k) for k, _, _ in changed):
        pipe = assemble(recipe, run_dir, saved=True)
    else:
        pipe.update_schedule(recipe.train, recipe.sample)  # the task sees the new values (eval_batches ...)
    return pipe


def start_run(recipe: Recipe, run_dir: Path, recipe_path: str) -> Pipeline:
    """Fit the pipeline and write the run directory's records (main process only)."""
    pipe = assemble(recipe, run_dir)
    if is_main_process():
        try:
            rundir.save_pipeline(pipe, run_dir)
            write_recipe_toml(pipe, run_dir, recipe_path)
            (run_dir / "run.json").write_text(json.dumps(environment(pipe) | warm_start.record(recipe), indent=2))
        except OSError as err:
            raise UserError(f"{run_dir}: cannot write the run directory: {err.strerror or err}") from None
    return pipe


def write_recipe_toml(pipe: Pipeline, run_dir: Path, recipe_path: str) -> None:
    """RUN/recipe.toml: every setting the run runs with (overrides and defaults included), as
    annotated TOML that `seqmodel run` takes back."""
    origin = f"# from {recipe_path}\n" if recipe_path else "# as resumed\n"
    write_atomic(run_dir / "recipe.toml", f"# seqmodel run {run_dir / 'recipe.toml'}\n{origin}{recipe_doc(pipe.recipe)}\n")


def record_resumed(pipe: Pipeline, run_dir: Path) -> None:
    """After a resume has loaded: the run directory's records say what the run now is."""
    if not is_main_process():
        return
    try:
        write_atomic(run_dir / "recipe.json", json.dumps(pipe.recipe.resolved(), indent=2))
        write_recipe_toml(pipe, run_dir, "")
        before = rundir.saved_environment(run_dir)
        if before is not None:  # what else it records (a warm start's origin) stays
            write_atomic(run_dir / "run.json", json.dumps(before | environment(pipe), indent=2))
    except OSError as err:
        raise UserError(f"{run_dir}: cannot write the run directory: {err.strerror or err}") from None


def check_resume_target(run_dir: Path) -> None:
    """A one-line error unless `run_dir` is a run directory (`--resume` never starts a mistyped one)."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory to resume (check --out)")
    if not (run_dir / "recipe.json").is_file():
        raise UserError(f"{run_dir}: not a seqmodel run directory (no recipe.json); nothing to resume")


def prepare_run(rec: Recipe, run_dir: Path, path: str, resume: bool, force: bool) -> tuple[Pipeline, bool]:
    """The pipeline to train and whether it resumes (call holding the run's lock)."""
    if is_main_process():
        checkpoint.collect_temporary(run_dir)
    if checkpoint.latest(run_dir) is not None:
        if not resume:
            raise UserError(f"{run_dir}: already holds a run; continue it with --resume or pick another --out")
        return check_resumable(run_dir, rec, force), True
    if checkpoint.any_started(run_dir):
        raise UserError(f"{run_dir}: no complete checkpoint left (checkpoints/ is damaged); "
                        "refusing to " + ("resume" if resume else "start over in it") + "; pick another --out")
    if resume and is_main_process():
        print(f"seqmodel: {run_dir} was stopped before its first checkpoint: starting it over", file=sys.stderr)
    return start_run(rec, run_dir, path), False


def recipe_of(recipe, overrides: list[str] = (), resume: bool = False) -> tuple[Recipe, str, Path | None]:
    """(recipe, its path, the run directory it was recorded in) for what `run` is given: a recipe
    file or a shipped recipe's name, a parsed `Recipe`, the tables as a dict, or -- to resume -- a
    run directory, whose recorded recipe (overrides included) continues with `overrides` on top.
    The recipe's model shape is still to be resolved (`shaped`)."""
    if isinstance(recipe, Recipe):
        rec, path, recorded = recipe, recipe.path, None
    elif isinstance(recipe, dict):
        rec, path, recorded = parse_recipe(apply_overrides(recipe, list(overrides)), "<recipe dict>"), "run", None
    elif resume and rundir.is_run_directory(recipe):
        recorded = Path(recipe)
        rec, path = rundir.recorded_recipe(recorded, overrides), str(recorded / "recipe.json")
    else:
        path, recorded = str(resolve(recipe)), None
        rec = load_recipe(path, overrides)
    return rec, path, recorded


def shaped(recipe: Recipe, run_dir: Path, resume: bool) -> Recipe:
    """`recipe` with its model shape: for a run that resumes from a checkpoint, the `[model]` its
    run directory recorded (a resume never reads the warm-start source again: the run holds its
    shape, tokenizer state and weights, so a moved or deleted source does not matter); otherwise
    the warm-start source's (`warm_start.resolve`)."""
    if resume and checkpoint.latest(run_dir) is not None:
        return warm_start.resolve(recipe, shape=rundir.saved_recipe(run_dir).get("model", {}))
    return warm_start.resolve(recipe)
