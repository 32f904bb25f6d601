"""Run the seqmodel CLI with stop points: the process stops itself (SIGSTOP) at a chosen moment
of training, so that a test can kill or signal it exactly there instead of after a sleep.

    python tests/killpoints.py POINT[,POINT...] SEQMODEL-ARGS...

POINT is one of
    step:N            before optimizer step N (0-based) runs
    save:N:PHASE      inside the checkpoint write of step N: PHASE "weights" (model.safetensors
                      written, optimizer.pt not yet), "state" (before state.json) or "latest"
                      (the checkpoint renamed into place, the `latest` pointer not yet updated)
    eval:N:K          before validation batch K of the evaluation after step N
Each point stops the process once.
"""

import os
import signal
import sys

from seqmodel import cli
from seqmodel.training import checkpoint, train

POINTS = set(sys.argv[1].split(","))
current = {"step": None}


def reached(point: str) -> None:
    if point in POINTS:
        POINTS.discard(point)
        os.kill(os.getpid(), signal.SIGSTOP)


def step_of_path(path) -> int | None:
    for part in str(path).split(os.sep):
        if part.startswith((".step_", "step_")):
            return int(part.split("_")[1].split(".")[0])
    return None


def wrap_train_step(original):
    def train_step(self, step, stream):
        current["step"] = step + 1
        reached(f"step:{step}")
        return original(self, step, stream)
    return train_step


def wrap_writer(original, phase: str, after: bool):
    def writer(*args, **kw):
        path = args[1]
        if not after:
            reached(f"save:{step_of_path(path)}:{phase}")
        out = original(*args, **kw)
        if after:
            reached(f"save:{step_of_path(path)}:{phase}")
        return out
    return writer


def wrap_write_atomic(original):
    def write_atomic(path, text):
        if path.name == "state.json":
            reached(f"save:{step_of_path(path)}:state")
        elif path.name == "latest":
            reached(f"save:{int(text.split('_')[1])}:latest")
        return original(path, text)
    return write_atomic


class PausingStream:
    def __init__(self, stream) -> None:
        self.stream = stream

    def batch(self, where):
        reached(f"eval:{current['step']}:{where.step}")
        return self.stream.batch(where)


def wrap_val_loss(original):
    def val_loss(self, model, stream, *rest):
        return original(self, model, PausingStream(stream), *rest)
    return val_loss


train.Trainer.train_step = wrap_train_step(train.Trainer.train_step)
train.Trainer.val_loss = wrap_val_loss(train.Trainer.val_loss)
checkpoint.save_model = wrap_writer(checkpoint.save_model, "weights", after=True)
if hasattr(checkpoint, "write_atomic"):
    checkpoint.write_atomic = wrap_write_atomic(checkpoint.write_atomic)
sys.exit(cli.main(sys.argv[2:]))
