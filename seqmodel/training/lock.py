"""One writer per run directory: an exclusive `flock` on ``RUN/.lock``, which holds the pid.

Two `seqmodel run`s (or `--resume`s) on one `--out` would interleave metrics.jsonl and mix
weights from different seeds: the second one gets a one-line error naming the first one's pid.
The kernel drops the lock when its holder dies, however it dies, so the lock of a killed run is
taken over by the next one. The multi-process launcher holds the lock for its workers and names
itself to them in `HELD_BY`; a worker started any other way locks only on rank 0.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from seqmodel.errors import UserError
from seqmodel.files import is_main_process

LOCK = ".lock"
HELD_BY = "SEQMODEL_RUN_LOCKED_BY"  # environment: pid of the launcher holding the lock for its workers


def holder(run_dir: Path) -> str:
    """The pid written in the run's lock file ("unknown" if unreadable)."""
    try:
        text = (run_dir / LOCK).read_bytes()[:32].decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the `with` block (created if missing)."""
    if os.environ.get(HELD_BY) and holder(run_dir) == os.environ[HELD_BY]:
        yield  # a worker of the launcher that holds it
        return
    if not is_main_process():
        yield
        return
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"{run_dir}: cannot write the run directory: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"{run_dir}: in use by another seqmodel run (pid {holder(run_dir)}); "
                                "wait for it to finish or stop it, or pick another --out") from None
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):  # no locks on this file system
                raise UserError(f"{run_dir}: cannot lock the run directory: {err.strerror or err}") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as err:
            raise UserError(f"{run_dir}: cannot write the run directory: {err.strerror or err}") from None
        yield
    finally:
        os.close(fd)
