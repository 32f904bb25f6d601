"""The processes of one run, on one machine or several.

- They must run the same thing: `check_same_run` compares each process's resolved recipe, data
  fingerprint, run directory and starting step with rank 0's in one collective before the model
  is wrapped, and every process stops with the same one-line error naming the first difference
  (two machines started with different learning rates would otherwise both train, and the
  validation loss logged by rank 0 would belong to a model that is never saved).
- A peer that stops answering (a machine that froze, crashed or lost its network) stops the run:
  collectives time out after `[train] peer_timeout` seconds from the first step on (torch's
  default is 30 minutes, with no output), and `lost_peers` turns the backend's error into one line.
  Before the first step (fitting, preparing data, loading a checkpoint: work one machine may do
  alone while the others wait) the timeout is the larger of `SETUP_TIMEOUT` and `peer_timeout`.
- A worker never outlives the agent that started it: `seqmodel.cli.launch.die_with_parent`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError, cut
from seqmodel.recipe.schema import TrainConfig
from seqmodel.training import checkpoint
from seqmodel.training.lifecycle import data_fingerprint, differences

SETUP_TIMEOUT = 1800.0  # seconds, torch's default for gloo
PER_PROCESS = ("threads", "cpu_memory_cache")  # [train] settings that may differ between machines
WAITED = "no answer within [train] peer_timeout = {timeout:g} s ({setup:g} s before the first step)"
LOST = {"Timed out waiting": WAITED, "timed out": WAITED,
        "Connection closed by peer": "its connection closed",
        "Connection reset by peer": "its connection was reset",
        "Broken pipe": "its connection broke"}


class PeerLost(UserError):
    """Another process of the run stopped answering. A launched worker prints it itself: the
    launcher then names the worker that failed first (`seqmodel.cli.launch.worker_failed`)."""

    report_to_launcher = False


def init_kwargs(cfg: TrainConfig) -> InitProcessGroupKwargs:
    """The process group's timeout until training starts (`started` shortens it)."""
    return InitProcessGroupKwargs(timeout=timedelta(seconds=max(cfg.peer_timeout, SETUP_TIMEOUT)))


def started(acc: Accelerator, cfg: TrainConfig) -> None:
    """Every process has its data and model ready: from here on, one that does not answer within
    `peer_timeout` seconds is lost."""
    if acc.num_processes > 1:
        acc.wait_for_everyone()
        dist.set_timeout(timedelta(seconds=cfg.peer_timeout))


def identity(pipe: Pipeline, run_dir: Path, start: int) -> dict:
    """What every process of a run must agree on."""
    recipe = pipe.recipe.resolved()
    recipe["train"] = {k: v for k, v in recipe["train"].items() if k not in PER_PROCESS}
    return {"recipe": recipe, "data fingerprint": data_fingerprint(pipe), "run directory": str(Path(run_dir).resolve()),
            "first step": start}


def check_same_run(acc: Accelerator, pipe: Pipeline, run_dir: Path, start: int) -> None:
    """One collective: every process's `identity` against rank 0's; a one-line error on every
    process naming the first key that differs."""
    if acc.num_processes == 1:
        return
    everyone: list = [None] * acc.num_processes
    dist.all_gather_object(everyone, identity(pipe, run_dir, start))
    for rank, other in enumerate(everyone[1:], 1):
        for key, ours, theirs in differences(everyone[0], other):
            raise UserError(f"the processes of this run differ: {key} is {cut(repr(ours), 80)} on rank 0, "
                            f"{cut(repr(theirs), 80)} on rank {rank}; start every machine with the same "
                            "recipe (overrides included), data and --out")


def lost(err: BaseException, timeout: float, run_dir: Path) -> PeerLost | None:
    """A `PeerLost` for a collective's error that means another process is gone, else None."""
    text = str(err)
    why = next((what for needle, what in LOST.items() if needle in text), None)
    if why is None:
        return None
    ckpt = checkpoint.latest(run_dir)
    then = (f"continue from step {checkpoint.step_of(ckpt)} with --resume once every machine is back" if ckpt is not None
            else "no checkpoint was written")
    why = why.format(timeout=timeout, setup=max(timeout, SETUP_TIMEOUT))
    return PeerLost(f"lost another process of the run: {why}; a machine stopped, froze, crashed or lost its "
                    f"network; the run stopped, {then}")


@contextlib.contextmanager
def lost_peers(timeout: float, run_dir: Path) -> Iterator[None]:
    """Turn the error of a collective whose peer is gone into one line (`PeerLost`)."""
    try:
        yield
    except RuntimeError as err:  # gloo raises RuntimeError, torch's own DistError subclasses it
        peer = lost(err, timeout, run_dir)
        if peer is None:
            raise
        raise peer from None
