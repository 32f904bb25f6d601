"""What a run reports while it trains: the task's metric at every evaluation, a plain line per log
step without a progress bar, the best checkpoint by a chosen metric, the loss curve."""

import json
import subprocess

import pytest
from conftest import SEQMODEL, cli, one_line_error, tiny_char_recipe

from seqmodel.training.tracking import better, log_line


def rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("tracked")
    recipe = tiny_char_recipe(tmp, corpus, steps=12, eval_every=3, log_every=3, lr=0.02, keep_best="bits_per_char",
                              checkpoint_every=6)
    done = cli("run", recipe, "--out", tmp / "run", "--no-progress")
    return tmp / "run", done


def test_every_evaluation_has_the_tasks_metric(tracked):
    run, _ = tracked
    evaluations = [r for r in rows(run) if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [3, 6, 9, 12] and all(r["bits_per_char"] > 0 for r in evaluations)
    final = json.loads(cli("eval", run, "--json", "--limit", "2").stdout)
    assert evaluations[-1]["bits_per_char"] == pytest.approx(final["bits_per_char"], rel=1e-6)  # the same 2 batches ([train] eval_batches)


def test_no_progress_prints_one_plain_line_per_log_step(tracked):
    run, done = tracked
    lines = [x for x in done.stderr.splitlines() if x.startswith("seqmodel: step ")]
    assert len(lines) == len(rows(run)) == 4
    assert lines[0].startswith("seqmodel: step 3: train ") and ", val " in lines[0] and "bits_per_char " in lines[0]


def test_a_piped_run_prints_plain_lines_not_a_bar(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=6, eval_every=3, log_every=2)
    err = subprocess.run([*SEQMODEL, "run", str(recipe), "--out", str(tmp_path / "run")], capture_output=True, text=True,
                         check=True).stderr
    assert "\r" not in err and err.count("seqmodel: step ") == 4  # log steps 2, 4, 6 and the evaluation at 3


def test_keep_best_keeps_the_step_with_the_best_metric(tracked):
    run, _ = tracked
    evaluations = [r for r in rows(run) if "val_loss" in r]
    best = min(evaluations, key=lambda r: r["bits_per_char"])
    state = json.loads((run / "checkpoints" / "best" / "state.json").read_text())
    assert state == {"metric": "bits_per_char", "value": best["bits_per_char"], "step": best["step"]}
    again = json.loads(cli("eval", run, "--checkpoint", "best", "--json", "--limit", "2").stdout)
    assert again["bits_per_char"] == pytest.approx(best["bits_per_char"], rel=1e-6)
    assert "no complete checkpoint '4' (the run has: best, step_0000006, step_0000012)" in one_line_error(cli("eval", run, "--checkpoint", "4", check=False))


@pytest.mark.parametrize("name, mode, new, old, expected", [
    ("val_loss", "auto", 1.0, 2.0, True), ("val_loss", "auto", 3.0, 2.0, False), ("accuracy", "auto", 0.9, 0.8, True),
    ("cer", "auto", 0.1, 0.2, True), ("mean_return", "auto", 10.0, 20.0, False), ("accuracy", "min", 0.1, 0.2, True),
    ("val_loss", "auto", float("nan"), None, False), ("exact_match", "auto", 0.5, None, True),
])
def test_better(name, mode, new, old, expected):
    assert better(name, mode, new, old) is expected


def test_log_line():
    line = log_line({"step": 250, "train_loss": 1.84123, "lr": 1e-3, "tokens_per_s": 29600.0, "elapsed_s": 3.0,
                     "val_loss": 1.90211, "accuracy": 0.935})
    assert line == "step 250: train 1.8412, val 1.9021, accuracy 0.9350 (29,600 tok/s)"


def test_a_tracker_that_is_not_installed_is_an_error_not_an_untracked_run(tmp_path, corpus):
    pytest.importorskip("tensorboard")
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    done = cli("run", tiny_char_recipe(tmp_path, corpus, steps=2, log_with="wandb"), "--out", tmp_path / "run", check=False)
    assert "[train] log_with: tracker 'wandb' is not available" in one_line_error(done)


@pytest.mark.parametrize("name, hint", [("val_los", "did you mean val_loss? "), ("accuracy", "")])
def test_keep_best_of_a_metric_the_task_never_reports_is_refused_by_check_and_run(tmp_path, corpus, name, hint):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4, eval_every=2, keep_best=name)
    expected = (f"{recipe}: [train] keep_best: the 'lm' task reports no metric '{name}' "
                f"({hint}it reports: val_loss, train_loss, bits_per_char)")
    assert one_line_error(cli("check", recipe, check=False)) == f"error: {expected}"
    assert one_line_error(cli("run", recipe, "--out", tmp_path / "run", check=False)) == f"error: {expected}"
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_keep_best_changed_on_resume_is_checked_too(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=2, eval_every=2)
    cli("run", recipe, "--out", tmp_path / "run", "--no-progress")
    done = cli("run", recipe, "--out", tmp_path / "run", "--resume", "--set", "train.steps=4",
               "--set", "train.keep_best='accuracy'", check=False)
    assert "[train] keep_best: the 'lm' task reports no metric 'accuracy'" in one_line_error(done)
    assert [r["step"] for r in rows(tmp_path / "run")][-1] == 2


def test_a_task_that_does_not_name_its_metrics_is_asked_once(tmp_path, corpus, monkeypatch):
    from seqmodel_plugins.tasks.lm import LMTask

    monkeypatch.delattr(LMTask, "metric_names")
    recipe = tiny_char_recipe(tmp_path, corpus, steps=2, eval_every=2, keep_best="accuracy")
    assert "(it reports: val_loss, train_loss, bits_per_char)" in one_line_error(cli("check", recipe, check=False))
    assert "ok (decoder" in cli("check", recipe, "--set", "train.keep_best='bits_per_char'").stdout


def test_the_builtin_tasks_name_the_metrics_they_report(tracked):
    from seqmodel_plugins.tasks.lm import LMTask

    from seqmodel import registry

    run, _ = tracked
    evaluation = next(r for r in rows(run) if "val_loss" in r)
    assert set(evaluation) - {"step", "lr", "tokens_per_s", "elapsed_s", "val_loss", "train_loss"} == set(LMTask.metric_names)
    for row in registry.available("task", check=False):
        cls = registry.load("task", row.name)
        if "metrics" in getattr(cls, "capabilities", ()):
            assert isinstance(cls.metric_names, tuple) and cls.metric_names, row.name


def test_init_from_the_best_checkpoint_starts_from_its_weights(tracked, tmp_path, corpus):
    from safetensors.torch import load_file

    run, _ = tracked
    best = run / "checkpoints" / "best"
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1, eval_every=1, init_from=str(best), lr=0.0, min_lr=0.0, warmup=0)
    assert "ok (decoder" in cli("check", recipe).stdout
    cli("run", recipe, "--out", tmp_path / "run", "--no-progress", "--set", "sample.num_samples=0")
    record = json.loads((tmp_path / "run" / "run.json").read_text())["init_from"]
    assert record["checkpoint"] == "best" and record["step"] == json.loads((best / "state.json").read_text())["step"]
    started, kept = load_file(tmp_path / "run" / "checkpoints" / "step_0000001" / "model.safetensors"), load_file(best / "model.safetensors")
    assert started.keys() == kept.keys() and all(started[k].equal(kept[k]) for k in kept)  # lr 0: one step changes nothing


def test_init_from_a_folder_of_checkpoints_that_a_run_does_not_keep_is_one_line(tracked, tmp_path, corpus):
    import shutil

    run, _ = tracked
    shutil.copytree(run, tmp_path / "copy")
    shutil.copytree(run / "checkpoints" / "step_0000012", tmp_path / "copy" / "checkpoints" / "step_12.diverged")
    recipe = tiny_char_recipe(tmp_path, corpus, init_from=str(tmp_path / "copy" / "checkpoints" / "step_12.diverged"))
    assert one_line_error(cli("check", recipe, check=False)).endswith(
        "step_12.diverged: not a checkpoint a run keeps (checkpoints/step_N or checkpoints/best)")
