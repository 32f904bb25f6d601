"""Damaged, crafted or shared run directories: every one is a one-line error naming the file (or
works, where a damaged file is redundant), never a traceback, a crash or a silent cast; two runs
never write one directory at once."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import cli, tiny_char_recipe
from inprocess import errors, seqmodel
from processes import finish, kill, start, wait_stopped
from safetensors.torch import load_file, save_file

from seqmodel.training import checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("trained")
    recipe = tiny_char_recipe(tmp, corpus, steps=4, checkpoint_every=2, eval_every=2)
    seqmodel("run", recipe, "--out", tmp / "run", "--no-progress")
    return recipe, tmp / "run"


@pytest.fixture
def copy(trained, tmp_path):
    recipe, run = trained
    shutil.copytree(run, tmp_path / "run")
    return recipe, tmp_path / "run"


def one_line_error(done, *needles) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert len(errors(done)) == 1 and errors(done)[0].startswith("error: "), done.stderr[-3000:]
    for needle in needles:
        assert needle in done.stderr, done.stderr


def newest(run: Path) -> Path:
    return checkpoint.latest(run)


def optimizer_damages():
    def transposed(sd):
        name = next(k for k, v in sd["state"].items() if v["exp_avg"].dim() == 2 and v["exp_avg"].shape[0] != v["exp_avg"].shape[1])
        sd["state"][name]["exp_avg"] = sd["state"][name]["exp_avg"].t().contiguous()
        return sd, name

    def shrunk(sd):
        name = next(iter(sd["state"]))
        sd["state"][name]["exp_avg_sq"] = torch.zeros(3)
        return sd, name

    def double(sd):
        name = next(iter(sd["state"]))
        sd["state"][name]["exp_avg"] = sd["state"][name]["exp_avg"].double()
        return sd, name

    def empty(sd):
        sd["state"] = {}
        return sd, "no AdamW moments"

    def a_list(sd):
        return [1, 2, 3], "expected a dict"

    def no_groups(sd):
        del sd["param_groups"]
        return sd, "param_groups"

    def foreign_name(sd):
        sd["state"]["core.nosuch.weight"] = next(iter(sd["state"].values()))
        return sd, "core.nosuch.weight"

    def nan_step(sd):
        name = next(iter(sd["state"]))
        sd["state"][name]["step"] = torch.tensor(float("nan"))
        return sd, name

    return [transposed, shrunk, double, empty, a_list, no_groups, foreign_name, nan_step]


@pytest.mark.parametrize("damage", optimizer_damages(), ids=lambda f: f.__name__)
def test_crafted_optimizer_state_is_refused_before_the_optimizer_sees_it(copy, damage):
    recipe, run = copy
    path = newest(run) / "optimizer.pt"
    sd, named = damage(torch.load(path, weights_only=True))
    torch.save(sd, path)
    resume = ("run", recipe, "--out", run, "--resume", "--set", "train.steps=6")
    shapes = damage.__name__ in ("transposed", "shrunk")  # a process: a heap corrupted by a bad shape would take pytest down
    one_line_error(cli(*resume, check=False) if shapes else seqmodel(*resume, check=False), str(path), named)


def test_weights_of_another_dtype_are_refused_not_cast(copy):
    _, run = copy
    path = newest(run) / "model.safetensors"
    save_file({k: (v * 100).long() for k, v in load_file(path).items()}, path)
    one_line_error(seqmodel("eval", run, check=False), str(path), "is int64", "the model's is float32")


def test_nonfinite_weights_are_refused(copy):
    _, run = copy
    path = newest(run) / "model.safetensors"
    weights = load_file(path)
    weights[next(iter(weights))][0, 0] = float("nan")
    save_file(weights, path)
    one_line_error(seqmodel("eval", run, check=False), str(path), "is not finite")


RESUME_DAMAGES = {
    "recipe.json is a list": ("recipe.json", b"[1, 2]", "recipe.json: damaged run recipe"),
    "recipe.json table is a number": ("recipe.json", b'{"model": 5}', "[model] must be a table"),
    "recipe.json tokenizers hold a list": ("recipe.json", None, "[tokenizers.text] must be a table"),
    "recipe.json is not UTF-8": ("recipe.json", b"\xff\xfe{", "recipe.json: damaged run recipe"),
    "recipe.json nests 100000 deep": ("recipe.json", b"[" * 100000 + b"]" * 100000, "recipe.json: damaged run recipe"),
    "state.json step is a string": ("STATE", b'{"step": "x", "history": []}', "damaged checkpoint state: 'step'"),
    "state.json history of strings": ("STATE", b'{"step": 4, "history": ["a"]}', "'history' must be"),
    "state.json is a list": ("STATE", b"[]", "expected a JSON object"),
    "state.json is not JSON": ("STATE", b"{{{", "unreadable checkpoint state"),
    "run.json is garbage": ("run.json", b"\x00\x01garbage", "run.json: damaged run record"),
    "run.json is a list": ("run.json", b"[]", "run.json: damaged run record"),
    "run.json plugins hold numbers": ("run.json", b'{"plugins": [1, 2]}', "run.json: damaged run record"),
}


@pytest.mark.parametrize("damage", RESUME_DAMAGES, ids=list(RESUME_DAMAGES))
def test_damaged_run_directory_on_resume_is_one_line(copy, damage):
    recipe, run = copy
    name, content, needle = RESUME_DAMAGES[damage]
    path = newest(run) / "state.json" if name == "STATE" else run / name
    if content is None:
        raw = json.loads(path.read_text())
        raw["tokenizers"] = {"text": ["char"]}
        content = json.dumps(raw).encode()
    path.write_bytes(content)
    before = (run / "metrics.jsonl").read_bytes()
    one_line_error(seqmodel("run", recipe, "--out", run, "--resume", "--set", "train.steps=6", check=False), needle)
    assert (run / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("pointer", [b"\xff\xfe\x80", b"step_0000004" * 9000, b"../../../etc/passwd", b""])
def test_damaged_latest_pointer_falls_back_to_the_newest_complete_checkpoint(copy, pointer):
    recipe, run = copy
    (run / "checkpoints" / "latest").write_bytes(pointer)
    assert "loss" in json.loads(seqmodel("eval", run, "--json").stdout)
    seqmodel("run", recipe, "--out", run, "--resume", "--set", "train.steps=6", "--no-progress")
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6


@pytest.fixture
def read_only(copy):
    """The run directory made read-only: a read-only bind mount as root (root ignores modes)."""
    recipe, run = copy
    if os.geteuid() != 0:
        run.chmod(0o555)
        yield recipe, run
        run.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", str(run), str(run)], capture_output=True, check=False).returncode:
        pytest.skip("root, but cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(run)], check=True, capture_output=True)
        yield recipe, run
    finally:
        subprocess.run(["umount", "-l", str(run)], check=True)


def test_read_only_run_directory_on_resume_is_one_line(read_only):
    recipe, run = read_only
    one_line_error(seqmodel("run", recipe, "--out", run, "--resume", "--set", "train.steps=6", check=False),
                   f"{run}: cannot write the run directory")


def test_two_runs_on_one_directory_the_second_is_refused_naming_the_first(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=30, checkpoint_every=5)
    run = tmp_path / "run"
    first = start(["step:7"], "run", recipe, "--out", run, "--no-progress")
    wait_stopped(first)  # holding the run directory, mid-training
    for extra in ([], ["--resume"]):
        one_line_error(seqmodel("run", recipe, "--out", run, *extra, check=False),
                       f"in use by another seqmodel run (pid {first.pid})")
    kill(first)  # its lock dies with it: a stale lock file is taken over
    assert (run / ".lock").read_text().strip() == str(first.pid)
    seqmodel("run", recipe, "--out", run, "--resume", "--no-progress")
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # one writer: no interleaved records


def test_a_second_resume_waits_for_nothing_and_writes_nothing(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=40, checkpoint_every=5)
    run = tmp_path / "run"
    seqmodel("run", recipe, "--out", run, "--no-progress", "--set", "train.steps=10")
    first = start(["step:12"], "run", recipe, "--out", run, "--resume", "--no-progress")
    wait_stopped(first)
    before = (run / "metrics.jsonl").read_bytes()
    one_line_error(seqmodel("run", recipe, "--out", run, "--resume", check=False), f"pid {first.pid}")
    assert (run / "metrics.jsonl").read_bytes() == before
    first.send_signal(__import__("signal").SIGCONT)
    code, err = finish(first)
    assert code == 0, err
