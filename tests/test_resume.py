"""Runs you can trust: SIGKILL at random moments, exact resume and data order, refusal to resume
a changed run, NaN detection, and crash-safe checkpoint files."""

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import SEQMODEL, cli, tiny_char_recipe

from seqmodel import checkpoint


def final(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def fingerprints(run: Path) -> dict[tuple[int, int], set[str]]:
    seen: dict[tuple[int, int], set[str]] = {}
    for line in (run / "batches.rank0.log").read_text().splitlines():
        step, micro, _, digest = line.split()
        seen.setdefault((int(step), int(micro)), set()).add(digest)
    return seen


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("ref")
    recipe = tiny_char_recipe(tmp, corpus, steps=80, checkpoint_every=4, eval_every=40, grad_accum=2,
                              fingerprint_batches=True)
    cli("run", recipe, "--out", tmp / "run", "--no-progress")
    return recipe, tmp / "run"


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_at_a_random_moment_then_resume_is_exact(tmp_path, reference, trial):
    recipe, ref = reference
    out = tmp_path / "run"
    rng = random.Random(trial)
    kills = 0
    for attempt in range(6):
        args = [*SEQMODEL, "run", str(recipe), "--out", str(out), "--no-progress"] + ["--resume"] * (attempt > 0)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(2.0, 4.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
        if proc.returncode == 0:
            break
    else:
        cli("run", recipe, "--out", out, "--resume", "--no-progress")
    assert kills >= 1
    assert final(out)["step"] == 80
    for key in ("val_loss", "train_loss"):
        assert final(out)[key] == final(ref)[key]
    got, want = fingerprints(out), fingerprints(ref)
    assert set(got) == set(want)
    assert all(got[k] == want[k] and len(want[k]) == 1 for k in want)  # replayed steps saw the same data


def test_incomplete_checkpoints_are_ignored(tmp_path):
    model = torch.nn.Linear(2, 2)
    good = checkpoint.save(tmp_path, 10, model, {"state": {}, "param_groups": []}, {"history": []})
    half = tmp_path / "checkpoints" / "step_0000020"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 10)  # killed before state.json
    (tmp_path / "checkpoints" / ".step_0000030.tmp99").mkdir()
    assert checkpoint.latest(tmp_path) == good
    (tmp_path / "checkpoints" / "latest").write_text("step_0000020")  # pointer to an incomplete one
    assert checkpoint.latest(tmp_path) == good


def test_unwritable_run_directory_is_a_clear_error(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = cli("run", recipe, "--out", blocker / "run", check=False)
    errors = [ln for ln in done.stderr.splitlines() if not ln.startswith("seqmodel: ")]  # not the fit report
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(errors) == 1
    assert str(blocker / "run") in errors[0]


def test_resume_refuses_a_changed_recipe_unless_forced(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=10)
    cli("run", recipe, "--out", tmp_path / "run", "--no-progress")
    done = cli("run", recipe, "--out", tmp_path / "run", "--resume", "--set", "train.lr=0.02", check=False)
    assert done.returncode == 2 and "refusing to resume: recipe changed: train.lr 0.01 -> 0.02" in done.stderr
    cli("run", recipe, "--out", tmp_path / "run", "--resume", "--set", "train.steps=12", "--no-progress")
    assert final(tmp_path / "run")["step"] == 12
    cli("run", recipe, "--out", tmp_path / "run", "--resume", "--force", "--set", "train.lr=0.02",
        "--set", "train.steps=14", "--no-progress")
    assert final(tmp_path / "run")["step"] == 14


def test_resume_refuses_a_changed_plugin_version_or_data(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=10)
    run = tmp_path / "run"
    cli("run", recipe, "--out", run, "--no-progress")
    record = json.loads((run / "run.json").read_text())
    record["plugins"][0]["version"] = "0.0.1"
    (run / "run.json").write_text(json.dumps(record))
    done = cli("run", recipe, "--out", run, "--resume", check=False)
    assert done.returncode == 2 and "version changed: 0.0.1 -> " in done.stderr
    record["plugins"][0]["version"] = json.loads(cli("plugins", "--json").stdout)[0]["version"]
    record["data_fingerprint"] = "0" * 64
    (run / "run.json").write_text(json.dumps(record))
    done = cli("run", recipe, "--out", run, "--resume", check=False)
    assert done.returncode == 2 and "data fingerprint changed" in done.stderr


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=200, checkpoint_every=5, lr=1e6, min_lr=1e6, grad_clip=0.0, warmup=0)
    done = cli("run", recipe, "--out", tmp_path / "run", "--no-progress", check=False)
    assert done.returncode == 2 and "training loss is nan" in done.stderr.lower() or "training loss is inf" in done.stderr
    assert "last good checkpoint is kept" in done.stderr
