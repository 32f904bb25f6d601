"""The Python API, mirroring the CLI: `run(recipe)` trains, `load(run_dir)` gives a `Run` that
generates, scores and evaluates."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from seqmodel import registry
from seqmodel._version import __version__
from seqmodel.config import build
from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError
from seqmodel.model.config import SampleConfig
from seqmodel.plugin import declared
from seqmodel.recipe.presets import resolve
from seqmodel.recipe.schema import Recipe, apply_overrides, load_recipe, parse_recipe
from seqmodel.task import can
from seqmodel.training import budget, checkpoint, rundir, warm_start
from seqmodel.training.lock import HELD_BY, run_lock


class Run:
    """A trained (or training) run directory with its pipeline and latest weights."""

    def __init__(self, pipeline: Pipeline, run_dir: Path) -> None:
        self.pipeline, self.dir = pipeline, run_dir

    @property
    def task(self):
        return self.pipeline.task

    @property
    def model(self):
        """The core model and the task's head, in eval mode."""
        return self.pipeline.module.eval()

    def _need(self, capability: str, what: str) -> None:
        if not can(self.task, capability):
            raise UserError(f"{self.dir}: the {self.pipeline.recipe.task.name!r} task cannot {what} "
                            f"(it declares: {', '.join(sorted(declared(self.task))) or 'nothing optional'})")

    def sample_config(self, **overrides) -> SampleConfig:
        """The run's `[sample]` settings with `overrides` (None leaves a value), validated like a recipe."""
        values = asdict(self.pipeline.recipe.sample) | {k: v for k, v in overrides.items() if v is not None}
        return build(SampleConfig, values, "[sample]")

    def generate(self, prompt: str | None = None, use_cache: bool = True, **overrides) -> str:
        """One output for `prompt` (default: the run's `[sample] prompt`); `overrides` are `[sample]` keys."""
        self._need("generate", "generate")
        cfg = self.sample_config(prompt=prompt, **overrides)
        return self.task.generate(self.model, cfg.prompt, cfg, use_cache)

    def score(self, text: str) -> dict:
        self._need("score", "score a text")
        return self.task.score(self.model, text)

    def evaluate(self, split: str = "val", limit: int | None = None, **options) -> dict:
        """Task metrics on a split; `options` are the task's evaluation options (`EvalOptions`)."""
        return self.pipeline.evaluate(split, limit, **options)

    def predict(self, inputs: list[str]) -> list[dict]:
        self._need("predict", "predict on files")
        return self.task.predict(self.model, [str(p) for p in inputs])


def load(run_dir: str | Path, device: str | None = None, which: str = "latest") -> Run:
    """Open a run directory: rebuild its pipeline and load a checkpoint's weights.

    Args:
        which: "latest" (the newest), "best" (kept by `[train] keep_best`) or a step number.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    pipe = Pipeline.from_run(run_dir)
    ckpt = checkpoint.named(run_dir, which)
    if ckpt is None:
        kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*") if (p / "state.json").is_file())
        raise UserError(f"{run_dir}: no complete checkpoint {which!r} (the run has: {', '.join(kept) or 'none yet'})")
    module = pipe.module
    checkpoint.load_weights(module, ckpt)
    module.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return Run(pipe, run_dir)


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


def is_main_process() -> bool:
    """True on rank 0 (or without a distributed launcher); decided before accelerate starts."""
    return int(os.environ.get("RANK", "0")) == 0


def data_fingerprint(pipe: Pipeline) -> str:
    """Hash of the source's identity and every tokenizer's saved state."""
    digest = hashlib.sha256(json.dumps(pipe.source.identity(), sort_keys=True, default=str).encode())
    with tempfile.TemporaryDirectory() as tmp:
        for m, tok in sorted(pipe.tokenizers.items()):
            (Path(tmp) / m).mkdir()
            tok.save(Path(tmp) / m)
            for f in sorted((Path(tmp) / m).rglob("*")):
                if f.is_file():
                    digest.update(f"{m}/{f.name}".encode() + f.read_bytes())
    return digest.hexdigest()


def environment(pipe: Pipeline) -> dict:
    """What a run depends on (written to run.json): versions, plugins and a data fingerprint."""
    import accelerate

    recipe = pipe.recipe
    used = [("source", recipe.data.name), ("task", recipe.task.name)] + [("tokenizer", b.name) for b in recipe.tokenizers.values()]
    plugins = [{"kind": k, "name": n, "distribution": d, "version": v} for k, n in dict.fromkeys(used)
               for d, v in [registry.plugin_version(k, n)]]
    return {"seqmodel": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version(), "plugins": plugins, "data_fingerprint": data_fingerprint(pipe)}


RESUMABLE = ("train.steps", "train.lr", "train.min_lr", "train.warmup", "train.weight_decay", "train.grad_clip",
             "train.eval_every", "train.eval_batches", "train.log_every", "train.checkpoint_every", "train.threads",
             "train.log_with", "train.compile", "train.cpu_memory_cache", "train.fingerprint_batches", "train.keep_best",
             "train.best_mode", "sample.*")
"""Recipe keys `--resume` applies when they changed: the schedule, the learning rate (to continue
after divergence), logging, evaluation, checkpoints, CPU threads and sampling. Any other change
would make the resumed run a different run; only `--force` applies it."""


def resumable(key: str) -> bool:
    return key in RESUMABLE or f"{key.split('.')[0]}.*" in RESUMABLE


def _differences(old, new, path=""):
    """(dotted key, old value, new value) for every setting that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            yield from _differences(old.get(k), new.get(k), f"{path}.{k}" if path else k)
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
    pipe = Pipeline.from_run(run_dir)
    changed = list(_differences(pipe.recipe.resolved(), recipe.resolved())) if recipe is not None else []
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
        pipe = Pipeline.from_run(run_dir, recipe)
    else:
        pipe.recipe.train, pipe.recipe.sample = recipe.train, recipe.sample
        pipe.task.setup(pipe.context())  # the task sees the new values (eval_batches ...)
    return pipe


def start_run(recipe: Recipe, run_dir: Path, recipe_path: str) -> Pipeline:
    """Fit the pipeline and write the run directory's records (main process only)."""
    pipe = Pipeline(recipe, run_dir)
    pipe.fit(warm_start.tokenizer_states(recipe))
    if is_main_process():
        try:
            pipe.save(run_dir)
            write_recipe_toml(pipe, run_dir, recipe_path)
            (run_dir / "run.json").write_text(json.dumps(environment(pipe) | warm_start.record(recipe), indent=2))
        except OSError as err:
            raise UserError(f"{run_dir}: cannot write the run directory: {err.strerror or err}") from None
    return pipe


def write_recipe_toml(pipe: Pipeline, run_dir: Path, recipe_path: str) -> None:
    """RUN/recipe.toml: every setting the run runs with (overrides and defaults included), as
    annotated TOML that `seqmodel run` takes back."""
    from seqmodel.recipe.render import recipe_doc

    origin = f"# from {recipe_path}\n" if recipe_path else "# as resumed\n"
    checkpoint.write_atomic(run_dir / "recipe.toml", f"# seqmodel run {run_dir / 'recipe.toml'}\n{origin}{recipe_doc(pipe.recipe)}\n")


def _record_resumed(pipe: Pipeline, run_dir: Path) -> None:
    """After a resume has loaded: the run directory's records say what the run now is."""
    if not is_main_process():
        return
    try:
        checkpoint.write_atomic(run_dir / "recipe.json", json.dumps(pipe.recipe.resolved(), indent=2))
        write_recipe_toml(pipe, run_dir, "")
        before = rundir.saved_environment(run_dir)
        if before is not None:  # what else it records (a warm start's origin) stays
            checkpoint.write_atomic(run_dir / "run.json", json.dumps(before | environment(pipe), indent=2))
    except OSError as err:
        raise UserError(f"{run_dir}: cannot write the run directory: {err.strerror or err}") from None


def check_resume_target(run_dir: Path) -> None:
    """A one-line error unless `run_dir` is a run directory (`--resume` never starts a mistyped one)."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory to resume (check --out)")
    if not (run_dir / "recipe.json").is_file():
        raise UserError(f"{run_dir}: not a seqmodel run directory (no recipe.json); nothing to resume")


def _prepare(rec: Recipe, run_dir: Path, path: str, resume: bool, force: bool) -> tuple[Pipeline, bool]:
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
    run directory, whose recorded recipe (overrides included) continues with `overrides` on top."""
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
    return warm_start.resolve(rec), path, recorded


def run(recipe: str | Path | Recipe | dict, overrides: list[str] = (), out: str | Path | None = None,
        resume: bool = False, progress: bool = True, force: bool = False) -> Run:
    """Train a recipe (a path or a parsed `Recipe`); returns the finished `Run`.

    Args:
        recipe: a recipe path, the name of a shipped recipe, a parsed `Recipe`, the tables as a
            dict, or (with `resume`) a run directory: it continues with the recipe it recorded.
        overrides: ``section.key=value`` strings.
        out: run directory (default runs/<recipe name>, numbered when taken).
        resume: continue `out` from its newest checkpoint (exactly: same data order, same RNG),
            with the new values of the `RESUMABLE` keys.
        force: resume even if other recipe keys, a plugin version or the data changed, with
            every new value.

    Raises:
        UserError: a bad recipe or run directory, a second run on the same directory, divergence.
        Interrupted: Ctrl-C or SIGTERM; says which checkpoint holds the run.
    """
    from seqmodel.training.report import finish_run
    from seqmodel.training.train import Interrupted, Trainer

    rec, path, recorded_in = recipe_of(recipe, overrides, resume)
    launched = HELD_BY in os.environ  # by `--num-processes`, which has checked and warned already
    budget.preflight(rec, int(os.environ.get("WORLD_SIZE", "1")), warn=is_main_process() and not launched)
    run_dir = Path(out) if out else recorded_in or default_run_dir(path, resume)
    if resume:
        check_resume_target(run_dir)
    with run_lock(run_dir):
        trainer = None
        try:
            pipe, resume = _prepare(rec, run_dir, path, resume, force)
            trainer = Trainer(pipe, run_dir, resume=resume, progress=progress)
            start = trainer.setup()
            if resume:
                _record_resumed(pipe, run_dir)
            trainer.train(start)
        except KeyboardInterrupt as stop:
            if isinstance(stop, Interrupted):
                raise
            raise Interrupted(trainer and trainer.done, checkpoint.latest(run_dir), run_dir) from None
        if trainer.acc.is_main_process:
            finish_run(pipe, run_dir, trainer.history)
    return Run(pipe, run_dir)
