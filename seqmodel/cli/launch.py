"""Multi-process training on one machine: `seqmodel run --num-processes N` starts N workers under
torch's elastic agent, running in the launcher's own process (what `torchrun --standalone` does,
without a second Python process between the user and the workers).

So a SIGINT or SIGTERM to the launcher (Ctrl-C, `timeout`, a scheduler, `kill PID`) reaches the
agent, which forwards it to every worker (each saves its checkpoint and exits) and waits for
them; whatever is still alive when the launcher leaves is killed, so no worker keeps writing the
run directory as an orphan. The launcher holds the run directory's lock for its workers; a
worker's user error is left in a folder and printed once, without the agent's traceback.

A launched worker, however it was started, asks the kernel to stop it when its agent dies
(`die_with_parent`). The training modules are imported inside the functions: the CLI imports
this module for every command, and `seqmodel --help` must not wait for torch.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from seqmodel.errors import UserError

WORKER_ERRORS = "SEQMODEL_WORKER_ERRORS"  # environment: folder where launched workers leave their UserError


def continue_command(args, run_dir, resume: bool = True) -> str:
    """The command that continues this run (from the recipe its directory recorded, overrides
    included), or restarts it."""
    if resume:
        cmd = ["seqmodel", "run", str(run_dir), "--resume"]
    else:
        cmd = ["seqmodel", "run", args.recipe, "--out", str(run_dir)] + [f"--set={o}" for o in args.overrides]
    cmd += [f"--num-processes={args.num_processes}"] * (args.num_processes != 1)
    return shlex.join(cmd)


def stopped_message(args, run_dir, step, ckpt) -> str:
    """What an interrupted run says: where it stopped, which checkpoint holds it, how to go on."""
    from seqmodel.training.checkpoint import step_of

    if ckpt is None:
        return (f"seqmodel: interrupted before the first checkpoint; nothing was saved. "
                f"Start again with: {continue_command(args, run_dir, resume=False)}")
    saved = step_of(ckpt)
    if step is None:
        held = f"seqmodel: interrupted; the newest checkpoint is step {saved}"
    elif saved == step:
        held = f"seqmodel: interrupted at step {step}; checkpoint saved"
    else:
        held = f"seqmodel: interrupted at step {step}, before its checkpoint was written; the newest is step {saved}"
    return f"{held}. Continue with: {continue_command(args, run_dir)}"


def launch(args) -> int:
    """Run this command on `--num-processes` workers under torch's elastic agent, in this process:
    a signal to it stops the workers (each saves its checkpoint first), a worker's user error is
    printed once, and no worker outlives it."""
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from seqmodel.training import budget
    from seqmodel.training.lifecycle import check_resume_target, default_run_dir, recipe_of, shaped
    from seqmodel.training.lock import HELD_BY, run_lock

    if args.num_processes < 1:
        raise UserError(f"--num-processes: expected at least 1, got {args.num_processes}")
    recipe, path, recorded = recipe_of(args.recipe, args.overrides, args.resume)
    out = Path(args.out) if args.out else recorded or default_run_dir(path, args.resume)
    if args.resume:
        check_resume_target(out)
    budget.preflight(shaped(recipe, out, args.resume), world=args.num_processes)  # before any worker starts
    worker = ["-u", "-m", "seqmodel", "run", args.recipe, "--out", str(out)] + [f"--set={o}" for o in args.overrides]
    worker += ["--resume"] * args.resume + ["--force"] * args.force + ["--no-progress"] * args.no_progress
    for name in list(logging.root.manager.loggerDict):  # the agent's log lines would repeat what we print
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    with run_lock(out), tempfile.TemporaryDirectory(prefix="seqmodel-errors-") as errors, \
            _environment({HELD_BY: str(os.getpid()), WORKER_ERRORS: errors,
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}):
        print(f"seqmodel: {args.num_processes} processes, run directory {out}", file=sys.stderr)
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=args.num_processes, rdzv_backend="c10d",
                              rdzv_endpoint="localhost:0", run_id=f"seqmodel-{os.getpid()}", max_restarts=0)
        try:
            elastic_launch(config, sys.executable)(*worker)
        except ChildFailedError as failed:
            return worker_failed(args, out, failed, Path(errors))
        except SignalException as signal:
            from seqmodel.training.checkpoint import latest

            print(f"\n{stopped_message(args, out, None, latest(out))}", file=sys.stderr)
            return 128 + int(signal.sigval)
        finally:
            _end_children()
    return 0


def worker_failed(args, out: Path, failed, errors: Path) -> int:
    """Report a failed multi-process run once: a worker's user error, else which worker died how."""
    from seqmodel.training.checkpoint import latest, step_of

    reported = sorted(errors.iterdir(), key=lambda f: (f.stat().st_mtime, f.name))
    if reported:
        print(f"error: {reported[0].read_text(encoding='utf-8', errors='replace').strip()}", file=sys.stderr)
        return 2
    rank, failure = failed.get_first_failure()
    how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    ckpt = latest(out)
    hint = (f"Continue from step {step_of(ckpt)} with: {continue_command(args, out)}" if ckpt is not None else
            f"No checkpoint was written; start again with: {continue_command(args, out, resume=False)}")
    print(f"error: a worker process failed (rank {rank}, {how}); the whole run stopped. {hint}", file=sys.stderr)
    return 1


PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent() -> None:
    """On Linux, have the kernel send this launched worker SIGHUP when the process that started it
    (torch's elastic agent: torchrun, accelerate launch, `--num-processes`) dies, however it dies:
    the worker then stops as on Ctrl-C (the run's processes agree to stop and checkpoint) instead of
    training on as an orphan. SIGHUP, not SIGTERM: the kernel sends it again as each thread of the
    dying agent exits, and a repeated SIGTERM means "stop at once, without a checkpoint". A worker
    whose agent is already gone stops at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the agent died before the request took effect
        os.kill(os.getpid(), signal.SIGHUP)


class _environment:
    """Set environment variables for a `with` block (the workers inherit them), then restore."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.before = values, {k: os.environ.get(k) for k in values}

    def __enter__(self):
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _end_children() -> None:
    """Kill whatever this process started that is still alive (workers the agent left behind)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


