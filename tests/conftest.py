"""Shared fixtures: a small deterministic text corpus and an in-process CLI runner."""

import atexit
import contextlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SEQMODEL = [sys.executable, "-m", "seqmodel"]

if "SEQMODEL_STORES" not in os.environ:  # the test runs' prepared stores stay out of the user's cache
    os.environ["SEQMODEL_STORES"] = tempfile.mkdtemp(prefix="seqmodel-test-stores-")
    atexit.register(shutil.rmtree, os.environ["SEQMODEL_STORES"], True)

WORDS = ("the king queen lord doth thou art not my good sir shall be to and of what love "
         "death night day sweet fair heart hath speak come go well now").split()


def make_text(n_lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 7 == 0:
            lines.append("\n" + rng.choice(["ROMEO", "JULIET", "KING"]) + ":")
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + rng.choice(".,;!?"))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(make_text(1500))
    return path


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


def small_lm_recipe(tmp: Path, data: str, tokenizer: str) -> Path:
    """A two-step lm recipe of a one-layer model with the given [data] and [tokenizer] lines, for
    tests of data and tokenization rather than of training."""
    path = tmp / "r.toml"
    path.write_text(f"""[model]
layers = 1
d_model = 16
heads = 2
context = 16
[train]
steps = 2
batch_size = 4
threads = 1
[data]
{data}
[tokenizer]
{tokenizer}
[task]
kind = "lm"
""")
    return path


def tiny_char_recipe(tmp: Path, corpus: Path, **train) -> Path:
    """A tiny char-LM recipe over the local corpus (seconds to train)."""
    settings = {"steps": 30, "batch_size": 8, "eval_every": 10, "eval_batches": 2, "log_every": 5,
                "checkpoint_every": 1000, "warmup": 5, "threads": 1, "lr": 0.01, "min_lr": 0.001, **train}
    lines = "\n".join(f"{k} = {toml_value(v)}" for k, v in settings.items())
    path = tmp / "tiny_char.toml"
    path.write_text(f"""# seqmodel run {path}
[model]
layers = 2
d_model = 32
heads = 2
context = 32
[train]
{lines}
[data]
source = "text"
paths = ["{corpus}"]
[tokenizer]
kind = "char"
[task]
kind = "lm"
[sample]
max_new_tokens = 40
num_samples = 1
""")
    return path


@dataclass
class Done:
    """What a `seqmodel` command printed and returned (the fields of subprocess.CompletedProcess)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def cli(*args, check=True, cwd=None) -> Done:
    """Run ``seqmodel ARGS`` in this process, as the console script would: its exit code, stdout and
    stderr (an unexpected exception is a traceback on stderr and exit code 1). Tests that need a
    real process (signals, several processes, the installed script) use `SEQMODEL` with subprocess."""
    from seqmodel import cli as seqmodel_cli

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    threads, here = torch.get_num_threads(), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = seqmodel_cli.main(argv)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except Exception:  # noqa: BLE001 -- what the interpreter would print
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    done = Done(argv, code, out.getvalue(), err.getvalue())
    if check and done.returncode != 0:
        raise AssertionError(f"seqmodel {' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def one_line_error(done: Done) -> str:
    """The error a failed command printed, checked to be one line with exit code 2 and no traceback
    (progress notes such as "seqmodel: char tokenizer: ..." may come before it)."""
    lines = [line for line in done.stderr.splitlines() if not line.startswith("seqmodel: ")]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]
