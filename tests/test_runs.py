"""`seqmodel runs`: each run's task metrics and best validation loss, several runs' curves in one
picture, and run folders damaged in every way a table must survive (one row says what is wrong)."""

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import cli, one_line_error, tiny_char_recipe

from seqmodel.training import runs


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, corpus):
    """Two finished tiny runs that differ in learning rate, side by side."""
    tmp = tmp_path_factory.mktemp("runs")
    recipe = tiny_char_recipe(tmp, corpus, steps=6, eval_every=2, log_every=2, eval_batches=1)
    for lr in ("0.01", "0.002"):
        cli("run", recipe, "--out", tmp / "all" / f"lr{lr}", "--no-progress", "--set", f"train.lr={lr}",
            "--set", "sample.num_samples=0")
    return tmp / "all"


def test_each_row_has_the_last_evaluations_task_metrics_and_the_best_val_loss(folder):
    rows = {Path(r["run"]).name: r for r in json.loads(cli("runs", folder, "--json").stdout)}
    assert sorted(rows) == ["lr0.002", "lr0.01"]
    table = cli("runs", folder).stdout
    for name, row in rows.items():
        evaluations = [r for r in records(folder / name) if "val_loss" in r]
        assert [r["step"] for r in evaluations] == [2, 4, 6]
        assert row["best_val_loss"] == min(r["val_loss"] for r in evaluations)
        assert row["metrics"] == {"bits_per_char": evaluations[-1]["bits_per_char"]}
        assert row["problem"] is None and row["step"] == 6
        line = next(x for x in table.splitlines() if x.startswith(name))
        assert line.endswith(f"bits_per_char {evaluations[-1]['bits_per_char']:.4f}")
        assert f"{row['best_val_loss']:.4f}" in line and "6/6" in line
    assert table.splitlines()[0].endswith("last evaluation")


class Axes:
    """Records what `runs.plot` draws."""

    def __init__(self) -> None:
        self.lines, self.labels = [], {}

    def plot(self, xs, ys, *style, label=None, **kw):
        self.lines.append((label, list(xs), list(ys)))

    def set(self, **kw):
        self.labels.update(kw)

    def grid(self, *a, **kw):
        pass

    def legend(self, *a, **kw):
        pass


def test_plot_overlays_each_runs_curve_of_the_metric(folder, tmp_path, monkeypatch):
    cli("runs", folder, "--plot", tmp_path / "all.png", "--metric", "bits_per_char")
    assert (tmp_path / "all.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = Axes()

    @contextlib.contextmanager
    def recording(path, **kw):
        yield None, axes

    monkeypatch.setattr(runs, "figure", recording)
    done = cli("runs", folder / "lr0.01", folder / "lr0.002", "--plot", tmp_path / "two.png")
    assert "val_loss of 2 of the 2 run(s)" in done.stderr
    expected = [(name, [r["step"] for r in records(folder / name) if "val_loss" in r],
                 [r["val_loss"] for r in records(folder / name) if "val_loss" in r]) for name in ("lr0.01", "lr0.002")]
    assert axes.lines == expected and axes.labels["ylabel"] == "val_loss"


def test_plot_of_a_metric_no_run_logged_names_those_they_did(folder, tmp_path):
    line = one_line_error(cli("runs", folder, "--plot", tmp_path / "x.png", "--metric", "accuracy", check=False))
    assert line == ("error: --metric 'accuracy': none of the 2 run(s) logged it (they logged: bits_per_char, "
                    "elapsed_s, lr, tokens_per_s, train_loss, val_loss)")
    line = one_line_error(cli("runs", folder, "--plot", tmp_path / "no" / "x.png", check=False))
    assert line == f"error: --plot {tmp_path / 'no' / 'x.png'}: no such folder {tmp_path / 'no'}"
    assert not (tmp_path / "x.png").exists()


def test_a_folder_that_is_not_there_or_not_a_folder_is_one_line(folder, tmp_path):
    assert one_line_error(cli("runs", tmp_path / "nope", check=False)).endswith("nope': no such folder "
                                                                               "(seqmodel runs DIR: a folder of run directories, or one)")
    (tmp_path / "file").write_text("x")
    assert "file': not a folder" in one_line_error(cli("runs", tmp_path / "file", check=False))


def fifo(path: Path) -> None:
    path.unlink() if not path.is_dir() else shutil.rmtree(path)
    os.mkfifo(path)


def folder_instead(path: Path) -> None:
    path.unlink()
    path.mkdir()


def sparse(size: int):
    def damage(path: Path) -> None:
        with open(path, "r+b") as f:
            f.truncate(size)
    return damage


def text(content: str):
    return lambda path: path.write_text(content)


DAMAGE = {  # what is damaged in a copy of a run, how, and what its row says
    "recipe.json not JSON": ("recipe.json", text("{bad"), "recipe.json: not valid JSON"),
    "recipe.json a JSON list": ("recipe.json", text("[1, 2]"), "recipe.json: not a recipe (a JSON object)"),
    "recipe.json nested past the recursion limit": ("recipe.json", text("[" * 100_000 + "]" * 100_000),
                                                    "recipe.json: not valid JSON"),
    "recipe.json a folder": ("recipe.json", folder_instead, "recipe.json is a folder, not a file"),
    "recipe.json of 20 MB": ("recipe.json", sparse(20 * 2**20), "recipe.json has 20 MB, more than a run's record"),
    "metrics.jsonl a folder": ("metrics.jsonl", folder_instead, "metrics.jsonl is a folder, not a file"),
    "metrics.jsonl a FIFO": ("metrics.jsonl", fifo, "metrics.jsonl is not a regular file"),
    "metrics.jsonl of 300 MB": ("metrics.jsonl", sparse(300 * 2**20), "metrics.jsonl has 300 MB"),
    "checkpoints a file": ("checkpoints", lambda p: (shutil.rmtree(p), p.write_text("x")), "checkpoints is not a folder"),
    "a checkpoint's state.json a list": ("checkpoints/step_0000006/state.json", text("[1]"),
                                         "checkpoints/step_0000006/state.json: no step"),
    "run.json not UTF-8": ("run.json", lambda p: p.write_bytes(b"\xff\xfe{"), "run.json: not valid JSON"),
}


@contextlib.contextmanager
def time_limit(seconds: int):
    def stop(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_run_folder_is_a_marked_row_and_the_others_stay(folder, tmp_path, case):
    name, damage, problem = DAMAGE[case]
    shutil.copytree(folder, tmp_path / "all")
    damage(tmp_path / "all" / "lr0.002" / name)
    good = json.loads(cli("runs", folder, "--json").stdout)[1]
    with time_limit(60):
        rows = {Path(r["run"]).name: r for r in json.loads(cli("runs", tmp_path / "all", "--json").stdout)}
        table = cli("runs", tmp_path / "all").stdout
    assert rows["lr0.01"] | {"run": "", "modified": ""} == good | {"run": "", "modified": ""}
    assert problem in rows["lr0.002"]["problem"]
    assert f"unreadable: {problem}" in next(x for x in table.splitlines() if x.startswith("lr0.002"))


def test_records_of_the_wrong_kind_are_skipped_not_fatal(folder, tmp_path):
    shutil.copytree(folder / "lr0.01", tmp_path / "run")
    last = records(folder / "lr0.01")[-1]
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "val_loss": NaN}\n{"step": true, "val_loss": 0.1}\n[1, 2]\n{"step": 8, "val_loss": "low", '
                '"elapsed_s": "long", "accuracy": true}\n{"step": 9, "val_loss": 1e999}\n{"step": 10, "train')
    [row] = json.loads(cli("runs", tmp_path / "run", "--json").stdout)
    assert row["problem"] is None and row["metrics"] == {"bits_per_char": last["bits_per_char"]}
    assert row["best_val_loss"] == min(r["val_loss"] for r in records(folder / "lr0.01") if "val_loss" in r)


def test_a_run_folder_whose_name_is_not_utf8_is_listed(folder, tmp_path):
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/odd\xff"))
    shutil.copytree(folder / "lr0.01", odd)
    table = cli("runs", tmp_path).stdout
    assert any(line.startswith("odd\\udcff ") and "bits_per_char" in line for line in table.splitlines())
