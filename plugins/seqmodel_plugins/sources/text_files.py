"""Large UTF-8 text files read in blocks, never as one Python string.

A set of files is scanned once (`scan_files`): each file's character count (after ``\\r\\n`` ->
``\\n``), marks from byte offsets to character offsets for seeking, and the sha256 of the whole
set (the `text` source's identity). The scan is memoized in the prepared-data folder, keyed by
every file's path, size, modification and change times and inode, so a later run on the same
files does not read them again. Invalid UTF-8 is reported with the file and its byte offset.

A character range is then read lazily (`read_range`), and cut into parts only before a line
break that follows a non-space character (`cut_parts`), the places where the text tokenizers
never join characters into one token (see `seqmodel.plugin.Parts`).
"""

from __future__ import annotations

import bisect
import codecs
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from seqmodel import files as cached
from seqmodel.errors import UserError

BLOCK = 1 << 22  # bytes read at a time
MARK = 1 << 24  # bytes between seek marks
PART = 1 << 20  # characters a part holds before it is cut (at the next safe place)
SCAN_FORMAT = 1
_SPACE = re.compile(r"\s")  # the class the bpe tokenizer's cut rule uses


@dataclass(frozen=True)
class FileScan:
    """One file: its length in characters and (byte offset, character offset) seek marks, each
    at the start of a character and never inside a ``\\r\\n``."""

    path: str
    chars: int
    marks: tuple[tuple[int, int], ...]


def decoded_blocks(path: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """(byte offset where the text begins, text) blocks of a file from byte `start` (a character
    start), decoded and with ``\\r\\n`` -> ``\\n``. Invalid UTF-8 is a one-line error naming the
    file and the byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry = ""  # a trailing "\r", held back: it may begin a "\r\n"
    try:
        with open(path, "rb") as f:
            f.seek(start)
            pos = begins = start
            while True:
                block = f.read(BLOCK)
                pending = decoder.getstate()[0]
                try:
                    text = carry + decoder.decode(block, final=not block)
                except UnicodeDecodeError as err:
                    at = pos - len(pending) + err.start
                    raise UserError(f"{path}: not valid UTF-8 at byte {at:,} ({err.reason}); "
                                    "the text source reads UTF-8 files") from None
                pos += len(block)
                carry = "\r" if block and text.endswith("\r") else ""
                text = text[:-1] if carry else text
                if "\r" in text:  # a search is ~10x faster than a replace that finds nothing
                    text = text.replace("\r\n", "\n")
                if text:
                    yield begins, text
                begins = pos - len(decoder.getstate()[0]) - len(carry)
                if not block:
                    return
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror or err}") from None


def scan(path: str, digest) -> FileScan:
    """Count a file's characters and mark byte -> character offsets, feeding its normalized text
    to `digest`."""
    chars, marks = 0, [(0, 0)]
    for begins, text in decoded_blocks(path):
        if begins - marks[-1][0] >= MARK:
            marks.append((begins, chars))
        chars += len(text)
        digest.update(text.encode("utf-8"))
    return FileScan(path, chars, tuple(marks))


def _stat_key(files: list[str]) -> str:
    rows = []
    for f in files:
        st = os.stat(f)
        rows.append([os.path.abspath(f), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev])
    return hashlib.sha256(json.dumps([SCAN_FORMAT, rows]).encode()).hexdigest()


def scan_files(files: list[str]) -> tuple[list[FileScan], str]:
    """Every file's scan and the sha256 of (name, NUL, normalized text) over the files in order;
    memoized by the files' state."""
    try:
        folder = cached.stores_root() / "text" / _stat_key(files)
    except OSError as err:
        raise UserError(f"cannot read the text files: {err}") from None
    with cached.locked(folder):
        memo = _read_memo(folder, files)
        if memo is not None:
            return memo
        total = sum(os.path.getsize(f) for f in files)
        if total >= 1 << 26:
            print(f"seqmodel: text source: reading {len(files):,} file(s), {total / 1e6:,.0f} MB, once to count and "
                  "hash them", file=sys.stderr)
        digest = hashlib.sha256()
        scans = []
        for f in files:
            digest.update(f.encode() + b"\0")
            scans.append(scan(f, digest))
        record = {"sha256": digest.hexdigest(), "files": [[s.path, s.chars, s.marks] for s in scans]}
        cached.remove_leftovers(folder)
        with cached.new_folder(folder, sealed=True) as tmp:
            (tmp / "scan.json").write_text(json.dumps(record))
        return scans, record["sha256"]


def _read_memo(folder: Path, files: list[str]) -> tuple[list[FileScan], str] | None:
    if not cached.intact(folder):  # a memo changed since it was written would misplace every read
        return None
    try:
        record = json.loads((folder / "scan.json").read_text())
        scans = [FileScan(p, int(n), tuple((int(b), int(c)) for b, c in marks)) for p, n, marks in record["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (scans, record["sha256"]) if [s.path for s in scans] == files else None


def read_range(scan: FileScan, start: int, stop: int) -> Iterator[str]:
    """Characters [start, stop) of a scanned file, in blocks."""
    at = bisect.bisect_right([c for _, c in scan.marks], start) - 1
    byte, skip = scan.marks[at][0], start - scan.marks[at][1]
    left = stop - start
    for _, text in decoded_blocks(scan.path, byte):
        if skip >= len(text):
            skip -= len(text)
            continue
        text, skip = text[skip:], 0
        if len(text) >= left:
            if left:
                yield text[:left]
            return
        left -= len(text)
        yield text


def last_cut(text: str) -> int:
    """The last index of `text` before which it may be cut (a "\\n" after a non-space), or -1."""
    i = text.rfind("\n")
    while i > 0:
        if not _SPACE.match(text[i - 1]):
            return i
        i = text.rfind("\n", 0, i)
    return -1


def cut_parts(texts: Iterable[str], size: int = PART) -> Iterator[str]:
    """`texts` joined and re-cut into parts of about `size` characters (more where no safe place
    comes sooner), each cut before a line break that follows a non-space character."""
    held: list[str] = []
    length = 0
    for text in texts:
        held.append(text)
        length += len(text)
        if length < size:
            continue
        joined = "".join(held)
        cut = last_cut(joined)
        if cut > 0:
            yield joined[:cut]
            joined = joined[cut:]
        held, length = [joined], len(joined)
    rest = "".join(held)
    if rest:
        yield rest
