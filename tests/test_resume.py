"""Runs you can trust: kills at chosen moments (mid-step, mid-checkpoint, mid-evaluation) then an
exact resume, what `--resume` may change and what `--force` does, resumes that must not start
over, and crash-safe checkpoint files."""

import json
import math
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import tiny_char_recipe
from inprocess import errors, seqmodel
from processes import finish, kill, start, wait_stopped

from seqmodel.training import checkpoint


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def final(run: Path) -> dict:
    return metrics(run)[-1]


def fingerprints(run: Path) -> dict[tuple[int, int], set[str]]:
    seen: dict[tuple[int, int], set[str]] = {}
    for line in (run / "batches.rank0.log").read_text().splitlines():
        step, micro, _, digest = line.split()
        seen.setdefault((int(step), int(micro)), set()).add(digest)
    return seen


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob(".*tmp*"))


def cosine_lr(step: int, lr: float, min_lr: float, warmup: int, steps: int) -> float:
    """The schedule the README promises, written out independently of seqmodel.train."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("ref")
    recipe = tiny_char_recipe(tmp, corpus, steps=40, checkpoint_every=4, eval_every=20, log_every=2, grad_accum=2,
                              fingerprint_batches=True)
    seqmodel("run", recipe, "--out", tmp / "run", "--no-progress")
    return recipe, tmp / "run"


KILLS = {
    "mid-step, mid-write, before the pointer": ["step:6", "save:12:weights", "save:20:latest", "step:33"],
    "before the first checkpoint, mid-state, mid-evaluation": ["step:2", "save:8:state", "eval:20:1", "save:40:weights"],
}


@pytest.mark.parametrize("plan", KILLS, ids=list(KILLS))
def test_sigkill_at_chosen_moments_then_resume_is_exact(tmp_path, reference, plan):
    recipe, ref = reference
    out = tmp_path / "run"
    for attempt, point in enumerate(KILLS[plan]):
        proc = start([point], "run", recipe, "--out", out, "--no-progress", *["--resume"] * (attempt > 0))
        wait_stopped(proc)
        kill(proc)
        if point.startswith("save:") and not point.endswith(":latest"):
            assert leftovers(out), "the kill landed inside the checkpoint write"
    seqmodel("run", recipe, "--out", out, "--resume", "--no-progress")
    assert leftovers(out) == []  # temporary directories of the killed writes were collected
    timing = ("tokens_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in metrics(out)] == \
           [{k: v for k, v in r.items() if k not in timing} for r in metrics(ref)]
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
    for garbage in (b"\xff\xfe\x00", b"step_0000010" * 10_000, b"../../etc"):  # damaged pointers fall back to the scan
        (tmp_path / "checkpoints" / "latest").write_bytes(garbage)
        assert checkpoint.latest(tmp_path) == good


def test_unwritable_run_directory_is_a_clear_error(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = seqmodel("run", recipe, "--out", blocker / "run", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(errors(done)) == 1
    assert str(blocker / "run") in errors(done)[0]


def test_resume_applies_the_resumable_keys(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=10, checkpoint_every=5, log_every=1, warmup=2)
    run = tmp_path / "run"
    seqmodel("run", recipe, "--out", run, "--no-progress")
    seqmodel("run", recipe, "--out", run, "--resume", "--no-progress", "--set", "train.steps=16", "--set", "train.lr=0.02",
        "--set", "train.min_lr=0.002", "--set", "train.eval_every=4", "--set", "sample.max_new_tokens=7")
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 17))
    for r in rows[10:]:
        assert r["lr"] == pytest.approx(cosine_lr(r["step"] - 1, 0.02, 0.002, 2, 16), rel=1e-12)
    assert [r["step"] for r in rows[10:] if "val_loss" in r] == [12, 16]
    saved = json.loads((run / "recipe.json").read_text())
    assert (saved["train"]["lr"], saved["train"]["steps"], saved["sample"]["max_new_tokens"]) == (0.02, 16, 7)


def test_resume_refuses_other_changes_and_force_applies_them(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=10, log_every=1)
    run = tmp_path / "run"
    seqmodel("run", recipe, "--out", run, "--no-progress")
    before = (run / "metrics.jsonl").read_text()
    done = seqmodel("run", recipe, "--out", run, "--resume", "--set", "train.seed=7", "--set", "train.lr=0.5", check=False)
    assert done.returncode == 2 and len(errors(done)) == 1
    assert "refusing to resume: recipe changed: train.seed 1337 -> 7" in done.stderr and "--force" in done.stderr
    assert (run / "metrics.jsonl").read_text() == before
    seqmodel("run", recipe, "--out", run, "--resume", "--force", "--no-progress", "--set", "train.seed=7",
        "--set", "train.lr=0.5", "--set", "train.steps=14")
    rows = metrics(run)
    assert [r["step"] for r in rows][-4:] == [11, 12, 13, 14]
    for r in rows[10:]:
        assert r["lr"] == pytest.approx(cosine_lr(r["step"] - 1, 0.5, 0.001, 5, 14), rel=1e-12)
    assert json.loads((run / "recipe.json").read_text())["train"]["seed"] == 7


def test_resume_refuses_a_changed_plugin_version_or_data_unless_forced(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=10)
    run = tmp_path / "run"
    seqmodel("run", recipe, "--out", run, "--no-progress")
    record = json.loads((run / "run.json").read_text())
    record["plugins"][0]["version"] = "0.0.1"
    (run / "run.json").write_text(json.dumps(record))
    done = seqmodel("run", recipe, "--out", run, "--resume", check=False)
    assert done.returncode == 2 and "version changed: 0.0.1 -> " in done.stderr
    record["plugins"][0]["version"] = json.loads(seqmodel("plugins", "--json").stdout)[0]["version"]
    record["data_fingerprint"] = "0" * 64
    (run / "run.json").write_text(json.dumps(record))
    done = seqmodel("run", recipe, "--out", run, "--resume", check=False)
    assert done.returncode == 2 and "data fingerprint changed" in done.stderr
    done = seqmodel("run", recipe, "--out", run, "--resume", "--force", "--set", "train.steps=12", "--no-progress")
    assert "resuming despite: data fingerprint changed" in done.stderr and final(run)["step"] == 12
    assert json.loads((run / "run.json").read_text())["data_fingerprint"] != "0" * 64  # the record says what the run now is


def test_resume_of_a_missing_or_damaged_run_never_starts_over(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=6, checkpoint_every=3)
    run = tmp_path / "run"
    done = seqmodel("run", recipe, "--out", tmp_path / "typo", "--resume", check=False)
    assert done.returncode == 2 and "no such run directory to resume" in done.stderr and not (tmp_path / "typo").exists()
    seqmodel("run", recipe, "--out", run, "--no-progress")
    before = (run / "metrics.jsonl").read_text()
    for step in ("step_0000003", "step_0000006"):
        (run / "checkpoints" / step / "state.json").unlink()  # no complete checkpoint left
    done = seqmodel("run", recipe, "--out", run, "--resume", check=False)
    assert done.returncode == 2 and len(errors(done)) == 1 and "no complete checkpoint" in done.stderr
    assert (run / "metrics.jsonl").read_text() == before  # a failed resume truncates nothing


def test_resume_before_the_first_checkpoint_starts_over_and_says_so(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=6, checkpoint_every=100)
    run = tmp_path / "run"
    proc = start(["step:3"], "run", recipe, "--out", run, "--no-progress")
    wait_stopped(proc)
    kill(proc)
    done = seqmodel("run", recipe, "--out", run, "--resume", "--no-progress")
    assert "stopped before its first checkpoint: starting it over" in done.stderr and final(run)["step"] == 6


@pytest.mark.parametrize("writer, error", [
    ("torch.save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 662")),
    ("save_model", __import__("safetensors").SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)")),
    ("torch.save", OSError(28, "No space left on device")),
])
def test_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, corpus, monkeypatch,
                                                                                    writer, error):
    """The errors are what torch.save and safetensors 0.8 raise on a full tmpfs (test_full_tmpfs below)."""
    def full(*args, **kw):
        raise error

    if writer == "torch.save":
        monkeypatch.setattr(checkpoint.torch, "save", full)
    else:
        monkeypatch.setattr(checkpoint, "save_model", full)
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4, checkpoint_every=2)
    done = seqmodel("run", recipe, "--out", tmp_path / "run", "--no-progress", check=False)
    err = errors(done)
    assert done.returncode == 2 and len(err) == 1 and "cannot write the checkpoint of step 2" in err[0], err
    assert leftovers(tmp_path / "run") == [] and checkpoint.latest(tmp_path / "run") is None


def test_divergence_keeps_no_nonfinite_checkpoint_and_names_the_last_good_one(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4, checkpoint_every=2, warmup=0, grad_clip=0.0)
    run = tmp_path / "run"
    seqmodel("run", recipe, "--out", run, "--no-progress")
    done = seqmodel("run", recipe, "--out", run, "--resume", "--no-progress", "--set", "train.steps=12",
                    "--set", "train.checkpoint_every=1", "--set", "train.lr=1e38", "--set", "train.min_lr=1e38", check=False)
    assert done.returncode == 2 and len(errors(done)) == 1, done.stderr
    assert "the last good checkpoint is step 4" in done.stderr  # step 5's weights gave the first non-finite loss
    assert checkpoint.step_of(checkpoint.latest(run)) == 4
    assert not (run / "checkpoints" / "step_0000005").exists()
    seqmodel("run", recipe, "--out", run, "--resume", "--no-progress", "--set", "train.steps=8")  # on from the good one
    assert final(run)["step"] == 8 and math.isfinite(final(run)["train_loss"])


def test_divergence_before_any_checkpoint_claims_none(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=50, checkpoint_every=1, lr=1e38, min_lr=1e38, warmup=0, grad_clip=0.0)
    done = seqmodel("run", recipe, "--out", tmp_path / "run", "--no-progress", check=False)
    assert done.returncode == 2 and len(errors(done)) == 1, done.stderr
    assert "no checkpoint was written before it" in done.stderr and "last good checkpoint is" not in done.stderr
    assert checkpoint.latest(tmp_path / "run") is None


def test_nan_loss_stops_with_a_clear_message(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=200, checkpoint_every=5, lr=1e6, min_lr=1e6, grad_clip=0.0, warmup=0)
    done = seqmodel("run", recipe, "--out", tmp_path / "run", "--no-progress", check=False)
    assert done.returncode == 2 and len(errors(done)) == 1
    assert "training loss is nan" in done.stderr.lower() or "training loss is inf" in done.stderr or "not finite" in done.stderr
    ckpt = checkpoint.latest(tmp_path / "run")
    if ckpt is None:
        assert "no checkpoint was written before it" in done.stderr
    else:
        assert f"the last good checkpoint is step {checkpoint.step_of(ckpt)}" in done.stderr


def test_ctrl_c_during_a_long_evaluation_stops_it_and_resume_completes_it(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=8, eval_every=4, log_every=2, eval_batches=2)
    seqmodel("run", recipe, "--out", tmp_path / "ref", "--no-progress")
    run = tmp_path / "run"
    proc = start(["eval:4:1"], "run", recipe, "--out", run, "--no-progress", "--set", "train.eval_batches=100000000")
    wait_stopped(proc)  # inside the evaluation after step 4, which would take hours
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    code, err = finish(proc, timeout=60)
    assert code == 130 and "interrupted at step 4; checkpoint saved" in err, err
    assert [r["step"] for r in metrics(run)] == [2]  # step 4's record waits for its evaluation
    seqmodel("run", recipe, "--out", run, "--resume", "--no-progress", "--set", "train.eval_batches=2")
    assert metrics(run) == [{**r, "tokens_per_s": m["tokens_per_s"], "elapsed_s": m["elapsed_s"]}
                            for r, m in zip(metrics(tmp_path / "ref"), metrics(run), strict=True)]


def test_second_ctrl_c_during_the_checkpoint_does_not_claim_it(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=20, checkpoint_every=2)
    run = tmp_path / "run"
    proc = start(["step:4", "save:5:weights"], "run", recipe, "--out", run, "--no-progress")
    wait_stopped(proc)  # before step 5: the first Ctrl-C asks for a checkpoint after it
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    wait_stopped(proc)  # writing that checkpoint: the second Ctrl-C stops at once
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    code, err = finish(proc)
    assert code == 130 and "checkpoint saved" not in err, err
    assert "interrupted at step 5, before its checkpoint was written; the newest is step 4" in err
    assert f"seqmodel run {run} --resume" in err
    assert checkpoint.step_of(checkpoint.latest(run)) == 4


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 160 kB tmpfs: room for a run directory's records, not for a checkpoint (root only)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True, check=False)
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)  # lazily: a file left open must not keep it


def test_full_tmpfs_while_checkpointing(tmp_path, corpus, tiny_tmpfs):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4, checkpoint_every=2)
    done = seqmodel("run", recipe, "--out", tiny_tmpfs / "run", "--no-progress", check=False)
    assert done.returncode == 2 and len(errors(done)) == 1, done.stderr
    assert "cannot write the checkpoint of step 2" in done.stderr and "MiB free on its disk" in done.stderr
    assert leftovers(tiny_tmpfs / "run") == []


def test_a_resume_that_fails_after_loading_leaves_metrics_alone(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=10, checkpoint_every=4, log_every=1)
    run = tmp_path / "run"
    seqmodel("run", recipe, "--out", run, "--no-progress")
    shutil.rmtree(run / "checkpoints" / "step_0000010")  # the newest left is step 8; metrics run to step 10
    before = (run / "metrics.jsonl").read_text()
    short = tmp_path / "short.txt"
    short.write_text(corpus.read_text()[:20])
    done = seqmodel("run", recipe, "--out", run, "--resume", "--force", "--set", f'data.paths=["{short}"]', check=False)
    assert done.returncode == 2 and "tokens" in done.stderr, done.stderr  # the split is shorter than one window
    assert (run / "metrics.jsonl").read_text() == before
