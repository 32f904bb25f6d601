"""Prepared stores: a split's token ids written once, memory-mapped by every run that reads them.

A store is a folder ``<stores>/<key>/`` (nanoGPT's ``train.bin``, plus what is needed to trust it):

    ids.bin       every id of the split, one flat array in the smallest unsigned dtype that holds
                  the vocabulary (uint8 / uint16 / uint32)
    offsets.npy   int64 start of each document in ids.bin, then the end (documents + 1 entries)
    meta.json     dtype, token and document counts, byte size, the CRC-32 of ids.bin, and what
                  was stored (for people)
    COMPLETE      written last

It is written under a temporary name and renamed into place, so a killed preparation never leaves
a folder that looks complete (its leftovers are removed by the next preparation of the key). A
store whose files disagree with meta.json (truncated, damaged) is reported in one line and
rebuilt; so is one whose ids no longer match the checksum written when it was committed, or fall
outside the vocabulary (`verify`, a streaming CRC-32 of ids.bin when a run opens the store). One process prepares a key at a time (`locked`): the others wait for it and map what it
wrote, so every process of a multi-process run, and runs started side by side, share one store.
"""

from __future__ import annotations

import contextlib
import functools
import json
import mmap
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqmodel.files import COMPLETE, finish_folder, write_error, write_synced

FORMAT = 2  # 2: meta.json holds the CRC-32 of ids.bin
_FLUSH_BYTES = 1 << 24
_VERIFY_BLOCK = 1 << 24  # bytes read at a time by `verify`
RELEASE_BLOCK = 1 << 21  # bytes: reads hand back the aligned blocks they touched (a huge page's worth)


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int64)


class TokenStream:
    """A split's ids, read-only, on a memory-mapped store. It reads like the int64 id tensor it
    stands for: ``len(s)``, ``s.shape``, ``s.numel()``; ``s[i]``, ``s[a:b]`` or ``s[index_tensor]``
    give int64 tensors, and ``s[:]`` (or ``s.tolist()``) the whole stream in memory.

    After each read the mapped pages it touched are handed back (``madvise(MADV_DONTNEED)``;
    they stay in the page cache): random windows over a large file would otherwise keep every
    page they ever touched, and the pages mapped around them, in the process's resident memory
    (nanoGPT re-opens its memmap every batch for the same reason).

    Attributes:
        ids: the mapped id array (its store dtype).
        offsets: start of each document in `ids`, then the end.
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, mapping: mmap.mmap | None = None) -> None:
        self.ids, self.offsets, self._mapping = ids, offsets, mapping

    dtype = torch.int64

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self.ids)])

    def numel(self) -> int:
        return len(self.ids)

    def tolist(self) -> list[int]:
        out = self.ids.tolist()
        self._release()
        return out

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        out = torch.from_numpy(np.array(self.ids[index], dtype=np.int64))
        self._release(index)
        return out

    def _release(self, index=slice(None)) -> None:
        """Hand back the mapped pages a read touched: the blocks of `RELEASE_BLOCK` bytes around
        them (the kernel maps pages around a fault, and whole folios), or the whole mapping after
        large reads (its cost grows with the mapping: about 20 ms for 2 GB)."""
        if self._mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        size, item = len(self._mapping), self.ids.itemsize
        if isinstance(index, slice):
            start, stop, _ = index.indices(len(self.ids))
            ranges = [(start * item // RELEASE_BLOCK, (max(stop, start + 1) * item - 1) // RELEASE_BLOCK)]
        elif isinstance(index, np.ndarray) and index.size <= 1 << 16:
            blocks = np.unique(index.astype(np.int64) * item // RELEASE_BLOCK).tolist()
            ranges = [(b, b) for b in blocks]
        else:
            ranges = [(0, (size - 1) // RELEASE_BLOCK)]
        for first, last in ranges:
            start = first * RELEASE_BLOCK
            self._mapping.madvise(mmap.MADV_DONTNEED, start, min((last + 1) * RELEASE_BLOCK, size) - start)

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1


# -- reading -----------------------------------------------------------------------------------
class Damaged(Exception):
    """A store folder that is not a complete store (the message says why)."""


def open_store(folder: Path) -> TokenStream:
    """Map a complete store; `Damaged` when its files disagree with its record."""
    if not (folder / COMPLETE).is_file():
        raise Damaged("it was never completed")
    try:
        meta = json.loads((folder / "meta.json").read_text())
        dtype, tokens, docs = np.dtype(meta["dtype"]), int(meta["tokens"]), int(meta["documents"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise Damaged(f"meta.json is unreadable ({err})") from None
    size = (folder / "ids.bin").stat().st_size if (folder / "ids.bin").is_file() else -1
    if size != tokens * dtype.itemsize:
        raise Damaged(f"ids.bin has {size:,} bytes, meta.json says {tokens * dtype.itemsize:,}")
    try:
        offsets = np.load(folder / "offsets.npy", mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:
        raise Damaged(f"offsets.npy is unreadable ({err or type(err).__name__})") from None
    if offsets.shape != (docs + 1,) or int(offsets[-1]) != tokens:
        raise Damaged(f"offsets.npy does not end at token {tokens:,}")
    if not tokens:
        return TokenStream(np.zeros(0, dtype), np.asarray(offsets))
    with open(folder / "ids.bin", "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return TokenStream(np.frombuffer(mapping, dtype=dtype), np.asarray(offsets), mapping)


def scan(path: Path, dtype: np.dtype, nbytes: int | None = None) -> tuple[int, int]:
    """(CRC-32, largest id) of the first `nbytes` bytes of an id file (all of it: None), read in
    blocks: constant memory, and the pages stay in the page cache for the mapping that follows."""
    crc, largest, buffer = 0, -1, bytearray(_VERIFY_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        left = os.fstat(f.fileno()).st_size if nbytes is None else nbytes
        while left > 0:
            n = f.readinto(view[: min(left, _VERIFY_BLOCK)])
            if not n:
                break
            crc = zlib.crc32(view[:n], crc)
            whole = n - n % dtype.itemsize
            if whole:
                largest = max(largest, int(np.frombuffer(buffer, dtype, whole // dtype.itemsize).max()))
            left -= n
    return crc, largest


def verify(folder: Path, vocab_size: int) -> None:
    """Check a complete store's ids against the CRC-32 its writer recorded and against the
    vocabulary; `Damaged` names what differs. It reads ids.bin once (about 0.5 s per GB from the
    page cache; see benchmarks/README.md, "Store checksums")."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        dtype, expected = np.dtype(meta["dtype"]), int(meta["crc32"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise Damaged(f"meta.json has no readable checksum ({err})") from None
    crc, largest = scan(folder / "ids.bin", dtype)
    if crc != expected:
        raise Damaged(f"ids.bin does not match its checksum (CRC-32 {crc:08x}, meta.json says {expected:08x})")
    if largest >= vocab_size:
        raise Damaged(f"ids.bin holds id {largest}, outside the vocabulary of {vocab_size}")


# -- writing -----------------------------------------------------------------------------------
def _writes(method):
    """A method of `StoreWriter` whose OSError (a full disk ...) removes the temporary folder and
    becomes a one-line `UserError`."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            self.abort()
            raise write_error(self.folder, err, self.tokens * self.dtype.itemsize) from None

    return guarded


class StoreWriter:
    """Writes one store under a temporary name; `commit` renames it into place, `abort` removes it.

    Ids are appended in order (`append`), each document opened by `start_document`. A `partial`
    writer works in ``.<name>.partial``, a name that outlives the process: `save_progress` records
    how far it got (with the reader's state), and a later writer of the same store continues from
    there (`progress` is that state, None when starting afresh)."""

    def __init__(self, folder: Path, dtype: np.dtype, what: dict, partial: bool = False) -> None:
        self.folder, self.dtype, self.what, self.partial = folder, np.dtype(dtype), what, partial
        self.tmp = folder.with_name(f".{folder.name}.partial" if partial else f".{folder.name}.tmp-{os.getpid()}")
        self.tokens, self.offsets, self._pending, self._buffered = 0, [], [], 0
        self._file, self.progress, self._crc = None, None, 0
        self._open()

    @_writes
    def _open(self) -> None:
        saved = self._saved_progress()
        if saved is None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)
            self._file = open(self.tmp / "ids.bin", "wb")
            return
        self.tokens, documents, self.progress = int(saved["tokens"]), int(saved["documents"]), saved["state"]
        self.offsets = np.load(self.tmp / "offsets.partial.npy")[:documents].tolist()
        self._crc, _ = scan(self.tmp / "ids.bin", self.dtype, self.tokens * self.dtype.itemsize)
        self._file = open(self.tmp / "ids.bin", "r+b")
        self._file.truncate(self.tokens * self.dtype.itemsize)  # what was written after the last record
        self._file.seek(0, os.SEEK_END)

    def _saved_progress(self) -> dict | None:
        try:
            saved = json.loads((self.tmp / "progress.json").read_text())
            size = (self.tmp / "ids.bin").stat().st_size
            if saved["dtype"] != self.dtype.name or size < int(saved["tokens"]) * self.dtype.itemsize:
                return None
            return saved
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @_writes
    def save_progress(self, state: Any) -> None:
        """Record how far the store got and the reader's `state` (a JSON value) to continue from."""
        self._flush()
        self._file.flush()
        os.fsync(self._file.fileno())
        np.save(self.tmp / "offsets.partial.npy", np.asarray(self.offsets, dtype=np.int64))
        record = {"tokens": self.tokens, "documents": len(self.offsets), "dtype": self.dtype.name, "state": state}
        write_synced(self.tmp / "progress.json.new", json.dumps(record))
        os.replace(self.tmp / "progress.json.new", self.tmp / "progress.json")

    def start_document(self) -> None:
        self.offsets.append(self.tokens)

    @_writes
    def append(self, ids: np.ndarray) -> None:
        if len(ids):
            chunk = np.ascontiguousarray(ids, dtype=self.dtype)
            self._pending.append(chunk)
            self.tokens += len(chunk)
            self._buffered += chunk.nbytes
            if self._buffered >= _FLUSH_BYTES:
                self._flush()

    def _flush(self) -> None:
        for chunk in self._pending:
            self._file.write(memoryview(chunk))
            self._crc = zlib.crc32(memoryview(chunk).cast("B"), self._crc)
        self._pending, self._buffered = [], 0

    @_writes
    def commit(self, extra: dict | None = None) -> Path:
        """Finish the files, mark the store complete and move it into place; returns its folder."""
        self._flush()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        np.save(self.tmp / "offsets.npy", np.asarray(self.offsets + [self.tokens], dtype=np.int64))
        meta = {"format": FORMAT, "dtype": self.dtype.name, "tokens": self.tokens, "documents": len(self.offsets),
                "ids_bytes": self.tokens * self.dtype.itemsize, "crc32": self._crc, **self.what, **(extra or {})}
        write_synced(self.tmp / "meta.json", json.dumps(meta, indent=1))
        for name in ("progress.json", "offsets.partial.npy"):
            (self.tmp / name).unlink(missing_ok=True)
        finish_folder(self.tmp, self.folder)
        return self.folder

    def close(self) -> None:
        """Stop writing, keeping a partial store's last recorded progress for the next writer."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()

    def abort(self) -> None:
        self.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
