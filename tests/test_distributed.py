"""Multi-process training on CPU (gloo) through torch.distributed + accelerate."""

import json
import signal
import subprocess
import time

import psutil
import pytest
from conftest import SEQMODEL, cli, tiny_char_recipe
from inprocess import errors, seqmodel
from processes import ENV, finish


def metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_follow_the_one_process_loss_curve(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=24, log_every=2, eval_every=8)
    cli("run", recipe, "--out", tmp_path / "one", "--no-progress")
    cli("run", recipe, "--out", tmp_path / "two", "--no-progress", "--num-processes", "2")
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] and len(one) == 12
    for a, b in zip(one, two):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4, (a, b)
        if "val_loss" in a:
            assert abs(a["val_loss"] - b["val_loss"]) < 1e-4, (a, b)
    assert (tmp_path / "two" / "checkpoints" / "latest").is_file()
    assert sorted(p.name for p in (tmp_path / "two").glob("metrics*")) == ["metrics.jsonl"]  # main process only


def test_killing_one_worker_stops_the_run_and_resume_finishes(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=400, log_every=5, eval_every=100, checkpoint_every=20)
    out = tmp_path / "run"
    proc = subprocess.Popen([*SEQMODEL, "run", str(recipe), "--out", str(out), "--no-progress", "--num-processes", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "latest").is_file():
        time.sleep(0.1)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "seqmodel" in " ".join(p.cmdline())
               and "torch.distributed.run" not in " ".join(p.cmdline())]
    assert len(workers) == 2, [p.cmdline() for p in workers]
    workers[1].send_signal(signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run hung after a worker died")
    assert proc.returncode not in (0, 130)
    assert "a worker process failed" in err and "--resume" in err
    cli("run", recipe, "--out", out, "--resume", "--no-progress", "--num-processes", "2")
    assert metrics(out)[-1]["step"] == 400


def test_tensorboard_tracker_receives_the_metrics(tmp_path, corpus):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tiny_char_recipe(tmp_path, corpus, steps=10, log_every=5, eval_every=10, log_with="tensorboard")
    cli("run", recipe, "--out", tmp_path / "run", "--no-progress")
    events = [p for p in (tmp_path / "run").rglob("events.out.tfevents.*")]
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train_loss")]
    assert steps == [5, 10]
    assert acc.Scalars("val_loss")[0].value == pytest.approx(metrics(tmp_path / "run")[-1]["val_loss"], abs=1e-6)


def test_fsdp_on_cpu_is_a_clear_error(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, distributed="fsdp")
    done = cli("run", recipe, "--out", tmp_path / "run", check=False)
    errors = [ln for ln in done.stderr.splitlines() if not ln.startswith("seqmodel: ")]  # not the fit report
    assert done.returncode == 2 and len(errors) == 1 and "fsdp needs CUDA GPUs" in errors[0]


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_launcher_stops_every_worker_after_a_checkpoint(tmp_path, corpus, sig):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=100000, log_every=5, eval_every=1000, checkpoint_every=10)
    out = tmp_path / "run"
    proc = subprocess.Popen([*SEQMODEL, "run", str(recipe), "--out", str(out), "--no-progress", "--num-processes", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    started = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "checkpoints" / "latest").is_file():
            time.sleep(0.1)
        started = descendants(proc)
        assert len(started) >= 2, [p.cmdline() for p in started]
        proc.send_signal(sig)  # what timeout(1), a scheduler or `kill PID` sends
        code, err = finish(proc, timeout=90)
        _, alive = psutil.wait_procs(started, timeout=30)
        assert alive == [], [p.cmdline() for p in alive]  # no orphan keeps training and writing the run directory
    finally:
        for p in started:
            if p.is_running():
                p.kill()
    assert code == 128 + sig, err
    assert "interrupted; the newest checkpoint is step" in err and "Traceback" not in err, err
    assert f"seqmodel run {out} --resume --num-processes=2" in err
    step = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    seqmodel("run", recipe, "--out", out, "--resume", "--no-progress", "--set", f"train.steps={step + 2}")
    assert metrics(out)[-1]["step"] == step + 2


def test_a_batch_that_does_not_split_is_refused_before_any_worker_starts(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, batch_size=8)
    done = seqmodel("run", recipe, "--out", tmp_path / "run", "--num-processes", "3", check=False)
    assert done.returncode == 2 and len(errors(done)) == 1, done.stderr
    assert "[train] batch_size: 8 does not split over 3 processes" in errors(done)[0]
    assert not (tmp_path / "run").exists()


def test_a_worker_error_is_printed_once_without_the_agent_traceback(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4)
    run = tmp_path / "run"
    seqmodel("run", recipe, "--out", run, "--no-progress")
    record = json.loads((run / "run.json").read_text())
    record["plugins"][0]["version"] = "0.0.1"
    (run / "run.json").write_text(json.dumps(record))  # each worker refuses to resume
    done = cli("run", recipe, "--out", run, "--resume", "--no-progress", "--num-processes", "2", check=False)
    assert done.returncode == 2, done.stderr
    assert len(errors(done)) == 1 and "refusing to resume" in errors(done)[0], done.stderr
    assert "Traceback" not in done.stderr and "worker process failed" not in done.stderr, done.stderr
