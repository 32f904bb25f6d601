"""The Python API, mirroring the CLI: `run(recipe)` trains, `load(run_dir)` gives a `Run` that
generates, scores and evaluates."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from seqmodel.config import build
from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError
from seqmodel.files import is_main_process
from seqmodel.model.config import SampleConfig
from seqmodel.plugin import declared
from seqmodel.recipe.schema import Recipe
from seqmodel.task import can
from seqmodel.training import budget, checkpoint, peers
from seqmodel.training.lifecycle import (
    assemble,
    check_resume_target,
    default_run_dir,
    prepare_run,
    recipe_of,
    record_resumed,
    shaped,
)
from seqmodel.training.lock import HELD_BY, run_lock
from seqmodel.training.report import finish_run
from seqmodel.training.train import Interrupted, Trainer


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
        if self.pipeline.members:
            raise UserError(f"{self.dir}: a mixture's members {what} each with its own task: name one with --member "
                            f"({', '.join(self.pipeline.members)})")
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


def load(run_dir: str | Path, device: str | None = None, which: str = "latest", member: str | None = None) -> Run:
    """Open a run directory: rebuild its pipeline and load a checkpoint's weights.

    Args:
        which: "latest" (the newest), "best" (kept by `[train] keep_best`) or a step number.
        member: of a mixture run, the member whose task the `Run` uses (None: the whole mixture).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    pipe = assemble(run_dir=run_dir, saved=True)
    ckpt = checkpoint.named(run_dir, which)
    if ckpt is None:
        kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*") if (p / "state.json").is_file())
        raise UserError(f"{run_dir}: no complete checkpoint {which!r} (the run has: {', '.join(kept) or 'none yet'})")
    module = pipe.module
    checkpoint.load_weights(module, ckpt)
    module.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    if member is not None and not pipe.members:
        raise UserError(f"--member {member}: {run_dir} is not a mixture run")
    return Run(pipe.member(member) if pipe.members else pipe, run_dir)


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
    rec, path, recorded_in = recipe_of(recipe, overrides, resume)
    run_dir = Path(out) if out else recorded_in or default_run_dir(path, resume)
    if resume:
        check_resume_target(run_dir)
    rec = shaped(rec, run_dir, resume)
    launched = HELD_BY in os.environ  # by `--num-processes`, which has checked and warned already
    budget.preflight(rec, int(os.environ.get("WORLD_SIZE", "1")), warn=is_main_process() and not launched)
    with run_lock(run_dir), peers.lost_peers(rec.train.peer_timeout, run_dir):
        trainer = None
        try:
            pipe, resume = prepare_run(rec, run_dir, path, resume, force)
            trainer = Trainer(pipe, run_dir, resume=resume, progress=progress)
            start = trainer.setup()
            if resume:
                record_resumed(pipe, run_dir)
            trainer.train(start)
        except KeyboardInterrupt as stop:
            if isinstance(stop, Interrupted):
                raise
            raise Interrupted(trainer and trainer.done, checkpoint.latest(run_dir), run_dir) from None
        if trainer.acc.is_main_process:
            finish_run(pipe, run_dir, trainer.history)
    return Run(pipe, run_dir)
