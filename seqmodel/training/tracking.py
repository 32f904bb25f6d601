"""What a training run reports besides its loss, as small hooks of the training loop: the task's
own metrics at every evaluation (task capability "metrics"), the best checkpoint by a chosen
metric (`[train] keep_best`), the loss curve refreshed as the run goes, and a plain
``step N: train X, val Y, accuracy Z`` line per log step when there is no progress bar (a log
file, ``--no-progress``)."""

from __future__ import annotations

import difflib
import math
import sys
from pathlib import Path

from seqmodel.errors import UserError, shown
from seqmodel.task import can
from seqmodel.training.report import loss_curve

LOWER_IS_BETTER = ("loss", "cer", "error", "bits", "perplexity", "mse")
"""A metric whose name contains one of these is minimised by `keep_best` (others are maximised)."""


def better(name: str, mode: str, new: float, old: float | None) -> bool:
    """Whether `new` beats `old` for metric `name` (`mode` "min", "max" or "auto")."""
    if not isinstance(new, (int, float)) or not math.isfinite(new):
        return False
    lower = mode == "min" or mode == "auto" and any(word in name for word in LOWER_IS_BETTER)
    return old is None or (new < old if lower else new > old)


EVALUATED = ("val_loss", "train_loss")
"""What every evaluation record holds besides the task's metrics."""


def reported_metrics(task, module) -> tuple[str, ...]:
    """The metrics an evaluation record holds: `EVALUATED` and the task's metric names (its
    declared ``metric_names``, else the keys of one call of its `metrics` on the validation split)."""
    if not can(task, "metrics"):
        return EVALUATED
    names = getattr(task, "metric_names", None)
    if names is None:
        try:
            names = tuple(task.metrics(module.eval(), "val"))
        finally:
            module.train()
    return EVALUATED + tuple(n for n in names if n not in EVALUATED)


def check_keep_best(pipeline) -> None:
    """Refuse a `[train] keep_best` metric the run never reports: it would keep nothing while the
    older checkpoints rotate away."""
    name = pipeline.recipe.train.keep_best
    if not name:
        return
    names = reported_metrics(pipeline.task, pipeline.module)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        who = f"the {pipeline.recipe.task.name!r} task reports" if pipeline.recipe.task else "the mixture's members report"
        raise UserError(f"{pipeline.recipe.path}: [train] keep_best: {who} no metric {shown(name)} "
                        f"({hint}it reports: {', '.join(names)})")


def log_line(record: dict) -> str:
    """``step 250: train 1.8412, val 1.9021, accuracy 0.9350 (29,600 tok/s)``."""
    parts = [f"train {record['train_loss']:.4f}"] if "train_loss" in record else []
    skip = {"step", "train_loss", "lr", "tokens_per_s", "elapsed_s"}
    for key, value in record.items():
        if key in skip or not isinstance(value, (int, float)):
            continue
        parts.append(f"{key.removesuffix('_loss') if key == 'val_loss' else key} {value:.4f}")
    speed = f" ({record['tokens_per_s']:,.0f} tok/s)" if "tokens_per_s" in record else ""
    return f"step {record['step']}: {', '.join(parts)}{speed}"


class Tracker:
    """The hooks one run uses; `main` is whether this process writes (rank 0)."""

    def __init__(self, pipeline, run_dir: Path, main: bool, plain: bool) -> None:
        self.pipeline, self.run_dir, self.main, self.plain = pipeline, run_dir, main, plain
        self.cfg = pipeline.recipe.train
        task = pipeline.task
        self.measures = can(task, "metrics")
        self.loss_label = task.loss_label if self.measures else "nats/token"

    def metrics(self, module) -> dict:
        """The task's metrics on the validation split (this process only), the module back in training mode."""
        if not (self.measures and self.main):
            return {}
        try:
            return {k: float(v) for k, v in self.pipeline.task.metrics(module.eval(), "val").items()}
        finally:
            module.train()

    def logged(self, record: dict, history: list[dict]) -> None:
        """After a record is written: the plain line, and on evaluations the refreshed loss curve."""
        if not self.main:
            return
        if self.plain:
            print(f"seqmodel: {log_line(record)}", file=sys.stderr, flush=True)
        if "val_loss" in record:
            loss_curve(history, self.run_dir / "loss.png", title=self.pipeline.recipe.path, unit=self.loss_label)

    def best_so_far(self, record: dict, history: list[dict]) -> bool:
        """Whether `record` holds a new best value of `[train] keep_best`."""
        name = self.cfg.keep_best
        if not name or name not in record:
            return False
        earlier = [r[name] for r in history if r is not record and isinstance(r.get(name), (int, float))]
        best = None
        for value in earlier:
            best = value if better(name, self.cfg.best_mode, value, best) else best
        return better(name, self.cfg.best_mode, record[name], best)
