"""Local audio files with transcripts: ``[data] source = "audiofolder"``.

A folder holds WAV, FLAC or OGG files and their transcripts, either in one ``metadata.csv`` (or
``metadata.jsonl``) with a ``file_name`` column (relative to that file's folder, sub-folders
allowed) and a ``text`` column -- the layout of HuggingFace's `audiofolder` builder -- or as a
``.txt`` file of the same name beside each audio file. Examples are ``{"audio": absolute file
name, "text": transcript}``: the source lists and checks the files (each one's header is read,
so a missing or unreadable file is a one-line error naming it before training starts) and the
`mel` tokenizer decodes, resamples and caches each file when an example is encoded.

Splits: one folder (`path`) is split by a seeded permutation of its examples; or `train` with
optional `val` and `test` folders, the splits without a folder carved from `train` the same way.
The identity is each file's name, size and modification time and its transcript: a changed file
makes a new prepared store and a refused `--resume`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import soundfile as sf

from seqmodel.capabilities import SPLITS, check_split
from seqmodel.config import path_field
from seqmodel.errors import UserError, cut, shown
from seqmodel.files import not_regular

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")
METADATA = ("metadata.csv", "metadata.jsonl")


@dataclass
class AudioFolderConfig:
    """`[data] source = "audiofolder"`: audio files with transcripts."""

    path: str = path_field()
    """One folder of audio files and transcripts (metadata.csv with file_name,text, or a .txt beside
    each audio file), split into train/val/test by `split_seed`."""
    train: str = path_field()
    """Or: the training folder (instead of `path`); splits without their own folder are carved from it."""
    val: str = path_field()
    """The validation folder (with `train`)."""
    test: str = path_field()
    """The test folder (with `train`)."""
    text_column: str = "text"
    """The transcript column of metadata.csv / metadata.jsonl."""
    split_seed: int = 0
    """Seed of the split of `path` (or of `train`, for splits without a folder)."""
    val_fraction: float = 0.1
    """Fraction of the files held out for validation when it has no folder of its own."""
    test_fraction: float = 0.1
    """Fraction of the files held out for test when it has no folder of its own."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        if bool(self.path) == bool(self.train):
            return [("path", "give either path (one folder to split) or train (with optional val/test folders)")]
        if self.path and (self.val or self.test):
            return [("val" if self.val else "test", "separate val/test folders go with train, not with path")]
        bad = [(k, f"must be in [0, 1), got {getattr(self, k)}") for k in ("val_fraction", "test_fraction")
               if not 0 <= getattr(self, k) < 1]
        if not bad and self.val_fraction + self.test_fraction >= 1:
            bad.append(("test_fraction", "val_fraction + test_fraction must be below 1"))
        return bad


def _metadata_rows(file: Path, column: str) -> list[tuple[int, dict]]:
    """(line number, row) of a metadata.csv or metadata.jsonl; a missing column is an error naming it."""
    try:
        with file.open(encoding="utf-8-sig", newline="") as f:  # a BOM (spreadsheet exports) is no part of a name
            if file.suffix == ".csv":
                reader = csv.DictReader(f)
                rows = [(n + 2, row) for n, row in enumerate(reader)]
                header = reader.fieldnames or []
            else:
                rows = [(n + 1, json.loads(line)) for n, line in enumerate(f) if line.strip()]
                header = sorted({k for _, r in rows for k in r}) if rows else []
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as err:
        raise UserError(f"{file}: cannot read the transcripts: {cut(err, 160)}") from None
    for name in ("file_name", column):
        if name not in header:
            raise UserError(f"{file}: no {name!r} column (it has: {', '.join(header) or 'none'}); expected "
                            f"file_name,{column}" + (" (set text_column)" if name == column else ""))
    return rows


def _transcript(file: Path) -> str:
    """A transcript file's text (UTF-8, a BOM dropped, stripped)."""
    try:
        return file.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{file}: cannot read the transcript: {cut(err, 160)}") from None


def _check_audio(file: Path) -> None:
    """Read the header of an audio file: a one-line error naming it when it is not readable audio."""
    try:
        info = sf.info(str(file))
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        reason = " ".join(str(err).split()).rsplit("': ", 1)[-1]
        raise UserError(f"{file}: not readable audio ({reason}); expected a WAV, FLAC or OGG file") from None
    if info.frames == 0:
        raise UserError(f"{file}: audio file holds no samples")


def folder_examples(folder: str, column: str = "text") -> list[dict]:
    """The ``{"audio", "text"}`` examples of one folder, in file-name order, each file checked."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"audio folder {shown(folder)} " + ("is not a folder" if root.exists() else "does not exist"))
    meta = next((root / m for m in METADATA if (root / m).is_file()), None)
    pairs = []
    if meta is not None:
        for line, row in _metadata_rows(meta, column):
            audio = (root / str(row["file_name"] or "")).resolve()
            if not audio.is_file():
                odd = not_regular(audio) if os.path.lexists(audio) else None
                raise UserError(f"{meta}: line {line}: file_name {shown(row['file_name'])} names "
                                + (f"{odd}, not an audio file" if odd else f"no file in {root}"))
            pairs.append((audio, str(row[column] or "")))
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        for audio in files:
            text = audio.with_suffix(".txt")
            if not text.is_file():
                raise UserError(f"{audio}: no transcript (expected {text.name} beside it, or a metadata.csv "
                                f"with file_name,{column} in {root})")
            pairs.append((audio.resolve(), _transcript(text)))
    if not pairs:
        raise UserError(f"audio folder {root} holds no audio files ({', '.join(AUDIO_SUFFIXES)}) with transcripts")
    for audio, _ in pairs:
        _check_audio(audio)
    return sorted(({"audio": str(a), "text": t} for a, t in pairs), key=lambda ex: ex["audio"])


def carve(examples: list[dict], seed: int, val: float, test: float) -> dict[str, list[dict]]:
    """A seeded split of `examples`: `test` of them to "test", `val` to "val" (at least one each
    when asked for and possible), the rest to "train", each in the original order."""
    n = len(examples)
    order = np.random.default_rng(np.random.SeedSequence([seed, n])).permutation(n)
    n_test = min(n - 1, max(1, round(n * test))) if test and n > 1 else 0
    n_val = min(n - 1 - n_test, max(1, round(n * val))) if val and n - n_test > 1 else 0
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {name: [examples[i] for i in sorted(idx)] for name, idx in parts.items()}


class AudioFolderSource:
    """Local audio files with transcripts (metadata.csv or a .txt beside each file), decoded per
    example by the tokenizer; see the module docstring."""

    Config = AudioFolderConfig
    fields = ("audio", "text")

    def __init__(self, config: AudioFolderConfig) -> None:
        self.config = config

    @cached_property
    def _splits(self) -> dict[str, list[dict]]:
        c = self.config
        if c.path:
            return carve(folder_examples(c.path, c.text_column), c.split_seed, c.val_fraction, c.test_fraction)
        own = {s: folder_examples(getattr(c, s), c.text_column) for s in ("val", "test") if getattr(c, s)}
        val = 0.0 if "val" in own else c.val_fraction
        test = 0.0 if "test" in own else c.test_fraction
        return carve(folder_examples(c.train, c.text_column), c.split_seed, val, test) | own

    def split(self, name: str) -> list[dict]:
        check_split(name)
        return self._splits[name]

    def identity(self) -> dict:
        h = hashlib.sha256()
        for name in SPLITS:
            for ex in self._splits[name]:
                st = Path(ex["audio"]).stat()
                h.update(json.dumps([name, ex["audio"], st.st_size, st.st_mtime_ns, ex["text"]]).encode())
        return {"source": "audiofolder", **self.config.__dict__, "sha256": h.hexdigest()}
