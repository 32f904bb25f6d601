"""What a finished run leaves behind besides weights: a loss-curve PNG, samples, task pictures."""

from __future__ import annotations

import sys
from pathlib import Path

from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError, cut
from seqmodel.plots import figure
from seqmodel.task import can


def loss_curve(history: list[dict], path: Path, title: str = "", unit: str = "nats/token") -> Path | None:
    """Train and validation loss against step, as a PNG."""
    train = [(r["step"], r["train_loss"]) for r in history if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    if not train:
        return None
    with figure(path, size=(7, 4)) as (fig, ax):
        ax.plot(*zip(*train), label="train", lw=1.2)
        if val:
            ax.plot(*zip(*val), "o-", label="validation", lw=1.5, ms=3)
            ax.annotate(f"{val[-1][1]:.4f}", val[-1], textcoords="offset points", xytext=(-30, 8))
        for name, curve in member_curves(history).items():
            ax.plot(*zip(*curve), "o--", label=f"{name} (validation)", lw=1, ms=2)
        ax.set(xlabel="step", ylabel=f"loss: {unit}", title=title)
        ax.margins(y=0.12)
        ax.grid(alpha=0.3)
        ax.legend()
    return path


def member_curves(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """A mixture's per-member validation losses (``NAME/val_loss``) against step."""
    names = dict.fromkeys(k.removesuffix("/val_loss") for r in history for k in r if k.endswith("/val_loss"))
    return {n: [(r["step"], r[f"{n}/val_loss"]) for r in history if f"{n}/val_loss" in r] for n in names}


def finish_run(pipeline: Pipeline, run_dir: Path, history: list[dict]) -> None:
    """Write the loss curve, end-of-run samples and whatever pictures the task draws; a failure
    is one line that says the trained run is kept (its last checkpoint was written before)."""
    try:
        write_report(pipeline, run_dir, history)
    except Exception as err:  # a plugin's report must not read as a lost run
        raise UserError(f"{run_dir}: the run finished and its checkpoints are kept, but the end-of-run report "
                        f"failed: {failure_words(pipeline, err)}") from err


def failure_words(pipeline: Pipeline, err: Exception) -> str:
    """What failed in an evaluation or the report, in one line: a user error as it is, anything
    else named after the task plugin (of a mixture: one of its members')."""
    if isinstance(err, UserError):
        return str(err)
    who = f"the {pipeline.recipe.task.name!r} task plugin" if pipeline.recipe.task else "a member's task plugin"
    return f"{who} failed: {type(err).__name__}: {cut(err, 300)}"


def write_report(pipeline: Pipeline, run_dir: Path, history: list[dict]) -> None:
    """The loss curve, end-of-run samples and the task's pictures."""
    task, model = pipeline.task, pipeline.module.eval()
    loss_curve(history, run_dir / "loss.png", title=f"{pipeline.recipe.path}",
               unit=task.loss_label if can(task, "metrics") else "nats/token")
    if can(task, "report"):
        task.report(model, run_dir)
    if can(task, "sample") and pipeline.recipe.sample.num_samples > 0:
        samples = task.sample(model, pipeline.recipe.sample)
        text = "".join(f"--- sample {i + 1} ---\n{s}\n" for i, s in enumerate(samples))
        (run_dir / "samples.txt").write_text(text)
        print(text, file=sys.stderr)
    last = next((r for r in reversed(history) if "val_loss" in r), history[-1] if history else {})
    summary = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items())
    print(f"seqmodel: finished {run_dir} ({summary})", file=sys.stderr)
