"""The vit_patches recipe through the CLI: run, eval --json, predict --json, one-line errors."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
from conftest import REPO, cli
from PIL import Image

RECIPE = REPO / "recipes" / "vit_patches.toml"
TINY = ["train.steps=40", "train.eval_every=20", "train.eval_batches=2", "train.batch_size=32", "train.warmup=5",
        "train.threads=1", "model.layers=1", "model.d_model=32", "model.heads=2"]


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit") / "run"
    cli("run", RECIPE, *sets(*TINY), "--out", out, "--no-progress")
    return out


def test_run_leaves_pictures_and_labels(run_dir):
    for name in ("confusion_matrix.png", "val_predictions.png", "loss.png", "task/labels.json", "tokenizers/image/patches.json"):
        assert (run_dir / name).is_file(), name
    evaluations = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert evaluations and all(0 <= r["accuracy"] <= 1 for r in evaluations)  # the task's metric at every evaluation


def test_eval_json_reports_test_accuracy(run_dir):
    metrics = json.loads(cli("eval", run_dir, "--split", "test", "--json").stdout)
    assert metrics["examples"] == 270 and 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics["per_class_accuracy"]) == {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


def test_predict_json_on_grey_and_colour_files(run_dir, tmp_path):
    rng = np.random.default_rng(0)
    grey, colour = tmp_path / "grey.png", tmp_path / "colour.jpg"
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(grey)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(colour)
    rows = json.loads(cli("predict", run_dir, grey, colour, "--json").stdout)
    assert [r["file"] for r in rows] == [str(grey), str(colour)]
    for r in rows:
        assert set(r) == {"file", "label", "prob"} and r["label"] in ("zero", "one", "two", "three", "four", "five",
                                                                       "six", "seven", "eight", "nine")
        assert 0.1 <= r["prob"] <= 1.0  # the most likely of 10 classes


def test_non_image_file_and_empty_folder_give_one_line_errors(run_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    done = cli("predict", run_dir, notes, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "notes.txt" in done.stderr
    (tmp_path / "empty").mkdir()
    overrides = ['data.source="imagefolder"', f'data.path="{tmp_path / "empty"}"', *TINY]
    done = cli("run", RECIPE, *sets(*overrides), "--out", tmp_path / "never", check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no class sub-folders" in done.stderr


@pytest.mark.slow
def test_full_recipe_reaches_0985_median_on_three_split_seeds(tmp_path):
    """The shipped recipe: test accuracy >= 0.98 on split seed 0, and >= 0.985 as the median of
    seeds 0, 1, 2 (measured: 0.989 / 0.996 / 0.985)."""
    accuracies = []
    for seed in (0, 1, 2):
        out = tmp_path / f"seed{seed}"
        start = time.perf_counter()
        cli("run", RECIPE, *sets(f"data.split_seed={seed}"), "--out", out, "--no-progress")
        metrics = json.loads(cli("eval", out, "--split", "test", "--json").stdout)
        print(f"split seed {seed}: test accuracy {metrics['accuracy']:.4f}, {time.perf_counter() - start:.0f} s")
        accuracies.append(metrics["accuracy"])
    assert accuracies[0] >= 0.98 and statistics.median(accuracies) >= 0.985
