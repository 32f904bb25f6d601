"""Files written so that nothing is lost, and where seqmodel keeps what it caches.

One copy of each helper the rooms share: atomic writes (a temporary file, fsynced, renamed into
place), folder fsync, the main-process test (decided before accelerate starts, from the
launcher's RANK), and the cache and store folders. Sources may use `cache_root` and
`stores_root` for what they download or index, and build a cached folder once, under a lock,
with `locked` and `new_folder` (a killed build leaves no folder that looks finished).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from seqmodel.errors import UserError

COMPLETE = "COMPLETE"  # the file that marks a finished folder


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it) durable; a no-op where a folder cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` and fsync it (inside a temporary folder that is renamed as a whole)."""
    with open(path, "wb" if isinstance(data, bytes) else "w", **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` through a fsynced temporary file and a rename: readers see the old
    file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def not_regular(path: Path) -> str | None:
    """What `path` is when it is neither a regular file nor a folder ("a FIFO", "a link to
    nothing" ...), for sources to refuse in one line: reading a FIFO waits for a writer forever.
    None for a file or a folder."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a link to nothing, or a link loop" if path.is_symlink() else "missing or unreadable"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"


def is_main_process() -> bool:
    """True on rank 0, or without a distributed launcher (read from RANK, before accelerate starts)."""
    return int(os.environ.get("RANK", "0")) == 0


def cache_root() -> Path:
    """$SEQMODEL_CACHE, else the user cache directory (where the Shakespeare corpus lives too)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("SEQMODEL_CACHE") or user_cache_dir("seqmodel"))


def stores_root() -> Path:
    """Where prepared stores and fitted tokenizer states live: $SEQMODEL_STORES, else <cache>/stores."""
    return Path(os.environ.get("SEQMODEL_STORES") or cache_root() / "stores")


# -- folders built once, under a lock ---------------------------------------------------------
@contextlib.contextmanager
def new_folder(folder: Path, sealed: bool = False) -> Iterator[Path]:
    """A temporary folder that becomes `folder`, marked complete, when the block ends without an
    error; removed when it raises (an OSError becomes a one-line `UserError`). `sealed`: the mark
    records a digest of the folder's files, which `intact` checks (for small folders)."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        finish_folder(tmp, folder, contents_digest(tmp) if sealed else "")
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(folder, err) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finish_folder(tmp: Path, folder: Path, record: str = "") -> None:
    """Mark `tmp` complete (the mark holding `record`) and put it in `folder`'s place
    (`replace_folder`: durably, replacing whatever is there)."""
    write_synced(tmp / COMPLETE, record)
    replace_folder(tmp, folder)


def discard(path: Path) -> None:
    """Remove `path`, whether a folder, a file or a link (nothing there is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def contents_digest(folder: Path) -> str:
    """sha256 of the names and contents of a folder's files (its completion mark left out)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def intact(folder: Path) -> bool:
    """Whether a folder finished by `new_folder(..., sealed=True)` still holds what it was
    finished with (False for one damaged since, or sealed by an older seqmodel)."""
    try:
        return (folder / COMPLETE).read_text() == contents_digest(folder)
    except (OSError, UnicodeDecodeError):
        return False


def is_complete(folder: Path) -> bool:
    """Whether `folder` was finished (`new_folder`, `finish_folder`), not left half-written."""
    return (folder / COMPLETE).is_file()


def remove_leftovers(folder: Path) -> None:
    """Remove the temporary folders that killed preparations of `folder` left, and an older
    `folder` a kill left moved aside (call holding its lock)."""
    for tmp in [*folder.parent.glob(f".{folder.name}.tmp-*"), *folder.parent.glob(f".{folder.name}.old-*")]:
        shutil.rmtree(tmp, ignore_errors=True)


def write_error(folder: Path, err: OSError, written: int = 0) -> UserError:
    """A failed write under `folder`'s parent as one line (nothing half-written is kept)."""
    after = f" after {written / 1e6:,.1f} MB" if written else ""
    if err.errno == errno.ENOSPC:
        return UserError(f"{folder.parent}: no space left on the device for the prepared data{after}; free some space "
                         "or set $SEQMODEL_STORES to a folder on a larger disk (nothing half-written was kept)")
    return UserError(f"{folder.parent}: cannot write the prepared data{after}: {err.strerror or err} "
                     "(nothing half-written was kept; $SEQMODEL_STORES chooses the folder)")


def lock_file(folder: Path) -> int | None:
    """An open descriptor of ``<folder>.lock``, created if need be; read-only where the cache is
    (a lock needs no write access); None where a finished `folder` is there to read without one."""
    path = folder.with_name(folder.name + ".lock")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise write_error(folder, err) from None
        with contextlib.suppress(OSError):
            return os.open(path, os.O_RDONLY)
        if is_complete(folder):  # nothing can change it: a read-only cache's folders are only read
            return None
        raise write_error(folder, err) from None


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<folder>.lock`` (waits, saying so, while another process holds it).
    Without `fcntl` (Windows), or reading a finished folder of a read-only cache, there is no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = lock_file(folder)
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if is_main_process():  # the other processes of a run wait silently
                print(f"seqmodel: waiting for another process preparing {folder} ...", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Rename the finished folder `tmp` to `folder`, durably. An existing `folder` is moved aside
    first and removed only once `tmp` has taken its place (put back if the rename fails)."""
    for path in tmp.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(tmp)
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}") if folder.exists() or folder.is_symlink() else None
    if old is not None:
        os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except BaseException:
        if old is not None:
            os.rename(old, folder)
        raise
    fsync_dir(folder.parent)
    if old is not None:
        with contextlib.suppress(OSError):
            discard(old)
