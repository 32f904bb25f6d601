"""Real `seqmodel` processes for the tests where a process is the point (kills, signals, locks):
started through tests/killpoints.py, so they stop themselves at a chosen moment."""

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

KILLPOINTS = Path(__file__).with_name("killpoints.py")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def start(points: list[str], *args) -> subprocess.Popen:
    """`seqmodel ARGS` in a new process that stops itself at each of `points` (see killpoints.py)."""
    cmd = [sys.executable, str(KILLPOINTS), ",".join(points) or "-", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_stopped(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until `proc` has stopped itself at a stop point; fail if it exits instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before its stop point:\n{proc.stderr.read()[-3000:]}")
        try:
            if psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED:
                return
        except psutil.NoSuchProcess:
            continue
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("never reached its stop point")


def kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    """(exit code, stderr) of `proc`, failing the test if it does not exit within `timeout`."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the process hung") from None
    return proc.returncode, err
