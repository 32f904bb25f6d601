"""A failure during an evaluation or the end-of-run report never loses the trained steps: the
step's checkpoint is written (with the evaluation pending), the error is one line, and `--resume`
evaluates again and continues exactly as a run that never failed."""

import json
from pathlib import Path

import pytest
from conftest import tiny_char_recipe
from inprocess import errors, seqmodel
from seqmodel_plugins.tasks.lm import LMTask

from seqmodel.errors import UserError
from seqmodel.training import checkpoint


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    """What must not depend on a failure and a resume in between (timings may)."""
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("whole")
    recipe = tiny_char_recipe(tmp, corpus, steps=6, eval_every=3, log_every=1, eval_batches=1, checkpoint_every=1000)
    seqmodel("run", recipe, "--out", tmp / "run", "--no-progress", "--set", "sample.num_samples=0")
    return recipe, tmp / "run"


@pytest.mark.parametrize("failure", [RuntimeError("the metric broke"), UserError("the environment is not installed")],
                         ids=["plugin bug", "user error"])
def test_a_failing_evaluation_keeps_its_step_and_resume_continues_exactly(tmp_path, uninterrupted, monkeypatch, failure):
    recipe, whole = uninterrupted
    run = tmp_path / "run"

    def broken(self, model, split):
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(LMTask, "metrics", broken)
        done = seqmodel("run", recipe, "--out", run, "--no-progress", "--set", "sample.num_samples=0", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = errors(done)
    assert line.startswith("error: step 3: ") and str(failure) in line and "--resume" in line
    assert checkpoint.step_of(checkpoint.latest(run)) == 3
    assert [r["step"] for r in records(run)] == [1, 2]

    seqmodel("run", recipe, "--out", run, "--resume", "--no-progress", "--set", "sample.num_samples=0")
    assert comparable(records(run)) == comparable(records(whole))


def test_a_failing_end_of_run_report_is_one_line_and_keeps_the_last_checkpoint(tmp_path, corpus, monkeypatch):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4, eval_every=2, log_every=2, eval_batches=1)

    def broken(self, model, cfg):
        raise ValueError("no samples today")

    monkeypatch.setattr(LMTask, "sample", broken)
    done = seqmodel("run", recipe, "--out", tmp_path / "run", "--no-progress", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = errors(done)
    assert "end-of-run report failed" in line and "no samples today" in line and "checkpoints are kept" in line
    assert checkpoint.step_of(checkpoint.latest(tmp_path / "run")) == 4
    assert [r["step"] for r in records(tmp_path / "run") if "val_loss" in r] == [2, 4]


def test_a_failing_member_evaluation_of_a_mixture_keeps_its_step(tmp_path, corpus, monkeypatch):
    from test_mixture import mixture_recipe

    def broken(self, model, split):
        raise RuntimeError("the metric broke")

    monkeypatch.setattr(LMTask, "metrics", broken)
    recipe = mixture_recipe(tmp_path, corpus, steps=4, eval_every=2, log_every=2)
    done = seqmodel("run", recipe, "--out", tmp_path / "run", "--no-progress", check=False)
    [line] = errors(done)
    assert done.returncode == 2 and line.startswith("error: step 2: the evaluation stopped the run: a member's task "
                                                    "plugin failed: RuntimeError: the metric broke; the trained steps")
    assert checkpoint.step_of(checkpoint.latest(tmp_path / "run")) == 2
