"""Shared fixtures: a small deterministic text corpus and a CLI runner."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEQMODEL = [sys.executable, "-m", "seqmodel"]

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


def cli(*args, check=True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*SEQMODEL, *map(str, args)], capture_output=True, text=True, env=env, **kw)
    if check and done.returncode != 0:
        raise AssertionError(f"seqmodel {' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done
