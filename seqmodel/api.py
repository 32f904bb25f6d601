"""The Python API, mirroring the CLI: `run(recipe)` trains, `load(run_dir)` gives a `Run` that
generates, scores and evaluates."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from . import __version__, checkpoint, registry, warm_start
from .config import build
from .errors import UserError
from .generate import SampleConfig
from .pipeline import Pipeline
from .plugin import declared
from .presets import resolve
from .recipe import Recipe, apply_overrides, load_recipe, parse_recipe
from .task import can


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


def load(run_dir: str | Path, device: str | None = None) -> Run:
    """Open a run directory: rebuild its pipeline and load the newest checkpoint's weights."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    pipe = Pipeline.from_run(run_dir)
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        raise UserError(f"{run_dir}: the run has no complete checkpoint yet")
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


def _differences(old, new, path=""):
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            yield from _differences(old.get(k), new.get(k), f"{path}.{k}" if path else k)
    elif old != new:
        yield f"{path} {old!r} -> {new!r}"


def check_resumable(run_dir: Path, recipe: Recipe | None) -> Pipeline:
    """The saved pipeline of `run_dir`, refusing a changed recipe, plugin version or data
    (`train.steps` may change: that is how a finished run is extended)."""
    pipe = Pipeline.from_run(run_dir)
    problems = []
    if recipe is not None:
        saved, now = pipe.recipe.resolved(), recipe.resolved()
        saved["train"].pop("steps"), now["train"].pop("steps")
        problems += [f"recipe changed: {d}" for d in _differences(saved, now)]
        pipe.recipe.train.steps = recipe.train.steps
    record = run_dir / "run.json"
    if record.is_file():
        before = json.loads(record.read_text())
        after = environment(pipe)
        problems += [f"{p['kind']} plugin {p['name']!r} version changed: {p['version']} -> {q['version']}"
                     for p, q in zip(before.get("plugins", []), after["plugins"]) if p != q]
        if before.get("data_fingerprint") not in (None, after["data_fingerprint"]):
            problems.append("data fingerprint changed (the source's data or the tokenizer state differ)")
    if problems:
        raise UserError(f"{run_dir}: refusing to resume: {problems[0]}"
                        + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") + "; --force resumes anyway")
    return pipe


def start_run(recipe: Recipe, run_dir: Path, recipe_path: str) -> Pipeline:
    """Fit the pipeline and write the run directory's records (main process only)."""
    pipe = Pipeline(recipe, run_dir)
    pipe.fit(warm_start.tokenizer_states(recipe))
    if is_main_process():
        try:
            pipe.save(run_dir)
            (run_dir / "recipe.toml").write_text(Path(recipe_path).read_text() if Path(recipe_path).is_file() else "")
            (run_dir / "run.json").write_text(json.dumps(environment(pipe) | warm_start.record(recipe), indent=2))
        except OSError as err:
            raise UserError(f"{run_dir}: cannot write the run directory: {err.strerror or err}") from None
    return pipe


def run(recipe: str | Path | Recipe | dict, overrides: list[str] = (), out: str | Path | None = None,
        resume: bool = False, progress: bool = True, force: bool = False) -> Run:
    """Train a recipe (a path or a parsed `Recipe`); returns the finished `Run`.

    Args:
        recipe: a recipe path, the name of a shipped recipe, a parsed `Recipe`, or the tables as a dict.
        overrides: ``section.key=value`` strings.
        out: run directory (default runs/<recipe name>, numbered when taken).
        resume: continue `out` from its newest checkpoint (exactly: same data order, same RNG).
        force: resume even if the recipe, a plugin version or the data changed.
    """
    from .report import finish_run
    from .train import Trainer

    if isinstance(recipe, Recipe):
        rec, path = recipe, recipe.path
    elif isinstance(recipe, dict):
        rec, path = parse_recipe(apply_overrides(recipe, list(overrides)), "<recipe dict>"), "run"
    else:
        path = str(resolve(recipe))
        rec = load_recipe(path, overrides)
    run_dir = Path(out) if out else default_run_dir(path, resume)
    if resume and checkpoint.latest(run_dir) is not None:
        pipe = check_resumable(run_dir, None if force else warm_start.resolve(rec))
        if force:
            pipe.recipe.train.steps = rec.train.steps
    else:
        if not resume and checkpoint.latest(run_dir) is not None:
            raise UserError(f"{run_dir}: already holds a run; continue it with --resume or pick another --out")
        resume = False  # killed before its first checkpoint: start over
        pipe = start_run(warm_start.resolve(rec), run_dir, path)
    trainer = Trainer(pipe, run_dir, resume=resume, progress=progress)
    trainer.run()
    if trainer.acc.is_main_process:
        finish_run(pipe, run_dir, trainer.history)
    return Run(pipe, run_dir)
