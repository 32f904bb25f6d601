"""The hf source with `streaming = true` over a local JSON-lines dataset (no internet): a run killed
with SIGKILL resumes to the same end as an uninterrupted one, a preparation killed part-way
continues from the stream's saved state, and a changed local file is refused on resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import SEQMODEL, cli, make_text

from seqmodel.data.pipeline import Pipeline
from seqmodel.recipe.schema import load_recipe


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    lines = make_text(n, seed=seed).splitlines()
    path.write_text("".join(json.dumps({"body": line, "id": i}) + "\n" for i, line in enumerate(lines)))


def streaming_recipe(tmp: Path, data: Path, **train) -> Path:
    settings = {"steps": 40, "batch_size": 8, "eval_every": 20, "eval_batches": 2, "log_every": 5, "checkpoint_every": 5,
                "warmup": 5, "threads": 1, "lr": 0.01, "min_lr": 0.001, "fingerprint_batches": True, **train}
    lines = "\n".join(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}" for k, v in settings.items())
    path = tmp / "stream.toml"
    path.write_text(f"""[model]
layers = 1
d_model = 32
heads = 2
context = 32
[train]
{lines}
[data]
source = "hf"
name = "json"
data_files = "{data}"
text_field = "body"
streaming = true
cache_dir = "{tmp / 'hf-cache'}"
[tokenizer]
kind = "char"
[task]
kind = "lm"
[sample]
num_samples = 0
""")
    return path


def final(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def fingerprints(run: Path) -> dict:
    return {tuple(line.split()[:3]): line.split()[3] for line in (run / "batches.rank0.log").read_text().splitlines()}


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "rows.jsonl"
    write_rows(path, 1500)
    return path


def test_a_streaming_run_killed_with_sigkill_resumes_to_the_same_end(tmp_path, data):
    recipe = streaming_recipe(tmp_path, data)
    cli("run", recipe, "--out", tmp_path / "ref", "--no-progress")
    out = tmp_path / "run"
    proc = subprocess.Popen([*SEQMODEL, "run", str(recipe), "--out", str(out), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        latest = out / "checkpoints" / "latest"
        if latest.is_file() and latest.read_text().strip() >= "step_0000010":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -9 and final(out)["step"] < 40
    cli("run", recipe, "--out", out, "--resume", "--no-progress")
    assert final(out)["step"] == 40
    for key in ("train_loss", "val_loss"):
        assert final(out)[key] == final(tmp_path / "ref")[key]
    got, want = fingerprints(out), fingerprints(tmp_path / "ref")
    assert set(got) == set(want) and all(got[k] == want[k] for k in want)


KILL_AFTER_PROGRESS = textwrap.dedent("""
    import os, signal, sys
    from seqmodel import cli
    from seqmodel.data import prepare, store
    prepare.PROGRESS_TOKENS = 2000  # record the stream's place often
    saved = store.StoreWriter.save_progress
    calls = []
    def save_then_die(self, state):
        saved(self, state)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    store.StoreWriter.save_progress = save_then_die
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_a_streamed_preparation_killed_part_way_continues_where_it_stopped(tmp_path, data, monkeypatch):
    monkeypatch.setenv("SEQMODEL_STORES", str(tmp_path / "stores"))
    recipe = streaming_recipe(tmp_path, data)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_PROGRESS, "prepare", str(recipe), "--split", "train"],
                            capture_output=True, text=True, env={**os.environ})
    assert killed.returncode == -9, killed.stderr[-2000:]
    (partial,) = (tmp_path / "stores" / "streams").glob(".*.partial")
    recorded = json.loads((partial / "progress.json").read_text())
    assert recorded["tokens"] >= 3 * 2000 and recorded["documents"] > 0
    done = cli("prepare", recipe, "--split", "train")
    assert f"continuing the preparation of the train split after {recorded['documents']:,} examples" in done.stderr
    assert "prepared now" in done.stdout and not partial.exists()
    pipe = Pipeline(load_recipe(recipe, []))
    pipe.fit()
    ctx = pipe.context()
    assert torch.equal(ctx.stream("text", "train")[:], ctx.encode_stream("text", "train"))


def test_a_changed_local_stream_is_refused_on_resume(tmp_path, data):
    recipe = streaming_recipe(tmp_path, data, steps=10, fingerprint_batches=False)
    cli("run", recipe, "--out", tmp_path / "run", "--no-progress")
    write_rows(data, 1500, seed=1)
    done = cli("run", recipe, "--out", tmp_path / "run", "--resume", "--set", "train.steps=12", check=False)
    assert done.returncode == 2 and "data fingerprint changed" in done.stderr
