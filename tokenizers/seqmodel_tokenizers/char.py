"""Character tokenizer: one id per distinct character of the training split.

The vocabulary is the sorted set of characters `fit` reads from the training split's texts,
streamed one field value at a time (`fit_text.TextStream`); `fit_max_chars` bounds how much it
reads, and one stderr line says how many characters came from how much text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqmodel.errors import UserError
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment

from .fit_text import TextStream

HF_FILE = "tokenizer.json"


@dataclass
class CharConfig:
    """`[tokenizer] kind = "char"`."""

    unknown: str = "error"
    """Characters outside the vocabulary at encode time: "error" (name them) or "skip" (drop them)."""
    position: str = "learned"
    """Position encoding of the text tokens: "learned", "rotary" or "none"."""
    fit_max_chars: int = 0
    """Build the vocabulary from at most this many characters of the training split, in document
    order (0: all of it). Characters only found later are then unknown (see `unknown`)."""
    include: str = ""
    """Characters in the vocabulary whether or not the training split has them (e.g. those of a
    corpus a later run fine-tunes on: a warm start keeps this vocabulary)."""

    def validate(self):
        bad = []
        if self.fit_max_chars < 0:
            bad.append(("fit_max_chars", f"must be 0 (no bound) or positive, got {self.fit_max_chars}"))
        if self.unknown not in ("error", "skip"):
            bad.append(("unknown", f"expected 'error' or 'skip', got {self.unknown!r}"))
        if self.position not in ("learned", "rotary", "none"):
            bad.append(("position", f"expected learned, rotary or none, got {self.position!r}"))
        return bad


def hf_characters(path: Path) -> list[str]:
    """The characters, in id order, of a `tokenizers` tokenizer.json whose model is a WordLevel
    vocabulary of single characters with ids 0..n-1; a one-line `UserError` for any other."""
    try:
        model = json.loads(path.read_text(encoding="utf-8"))["model"]
        kind, vocab = model["type"], model["vocab"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError):
        raise UserError(f"{path}: not a readable HuggingFace tokenizer.json") from None
    if not (kind == "WordLevel" and isinstance(vocab, dict) and vocab and all(isinstance(c, str) and len(c) == 1 for c in vocab)
            and sorted(i for i in vocab.values() if type(i) is int) == list(range(len(vocab)))):
        raise UserError(f"{path}: a {kind!r} tokenizer; the char tokenizer reads one of one character per token "
                        "(a WordLevel vocabulary of single characters with ids 0..n-1, as its export writes)")
    return sorted(vocab, key=vocab.get)


class CharTokenizer:
    """Maps each character to an id; the vocabulary is the sorted set of training characters."""

    Config = CharConfig
    FILE = "chars.json"
    capabilities = ("pieces", "examples", "hf_tokenizer", "parts")

    def __init__(self, config: CharConfig, modality: str = "text") -> None:
        self.config, self.modality = config, modality
        self.chars: list[str] = []
        self._table: np.ndarray | None = None
        self._translate: bytes | None = None

    def _set_vocab(self, chars: list[str]) -> None:
        self.chars = chars
        self._table = self._translate = None

    def fit(self, values: Iterable[str]) -> None:
        """The vocabulary: every character of the training split (up to `fit_max_chars`)."""
        seen: set[str] = set()
        known = b""  # the ASCII characters seen so far
        stream = TextStream(values, self.config.fit_max_chars, "char tokenizer")
        for text in stream:
            if text.isascii():  # deleting the known bytes leaves only new ones: ~10x faster than a set
                new = text.encode("ascii").translate(None, known)
                if new:
                    known += bytes(np.flatnonzero(np.bincount(np.frombuffer(new, np.uint8))).astype(np.uint8))
            else:
                seen.update(text)
        seen.update(chr(c) for c in known)
        if not seen:
            raise UserError("char tokenizer: the training split has no text to build a vocabulary from")
        self._set_vocab(sorted(seen | set(self.config.include)))
        stream.report(f"{len(self.chars):,} characters")

    def spec(self) -> ModalitySpec:
        return ModalitySpec(self.modality, vocab_size=len(self.chars), position=self.config.position)

    def _lookup(self) -> np.ndarray:
        """code point -> id, `_unknown` for characters outside the vocabulary (the last entry
        stands for every code point beyond the table). The table's dtype is the smallest that
        holds every id and the marker (uint8 up to 255 characters), so ids need no conversion."""
        if self._table is None:
            top = max(ord(c) for c in self.chars) + 1
            dtype = np.uint8 if len(self.chars) < 255 else np.uint16 if len(self.chars) < 65535 else np.uint32
            table = np.full(top + 1, np.iinfo(dtype).max, dtype=dtype)
            table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
            self._table = table
        return self._table

    def _bytes_table(self) -> bytes:
        """`_lookup` as a `bytes.translate` table for ASCII text (a vocabulary under 255 characters)."""
        if self._translate is None:
            table = self._lookup()
            self._translate = bytes(table[np.minimum(np.arange(256), len(table) - 1)])
        return self._translate

    def encode_ids(self, text: str) -> np.ndarray:
        return self._ids(text).astype(np.int64)

    def _ids(self, text: str) -> np.ndarray:
        """The ids of `text`, in the table's dtype."""
        table = self._lookup()
        if text.isascii() and table.dtype == np.uint8:  # bytes.translate: several times faster than numpy indexing
            translated = text.encode("ascii").translate(self._bytes_table())
            if b"\xff" not in translated:  # no unknown character (else the general path names or skips them)
                return np.frombuffer(translated, dtype=np.uint8)
        if text.isascii():
            codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        else:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        top = len(table) - 1
        ids = table[codes] if codes.dtype == np.uint8 and top >= 127 else table[np.minimum(codes, top)]  # ASCII < 128
        unknown = ids == np.iinfo(table.dtype).max
        if unknown.any():
            if self.config.unknown == "skip":
                return ids[~unknown]
            missing = sorted({chr(c) for c in codes[unknown]})
            raise UserError(f"char tokenizer: {len(missing)} character(s) not in this run's vocabulary: "
                            f"{''.join(missing[:20])!r} (set [tokenizer] unknown = \"skip\" to drop them)")
        return ids

    def encode(self, value: str, *, train: bool = False) -> Segment:
        return Segment(self.modality, ids=torch.from_numpy(self.encode_ids(value)))

    def encode_parts(self, parts: Iterable[str]) -> Iterator[np.ndarray | Segment]:
        """The ids of a text given in parts (each character on its own: any cut is exact); a
        subclass's own `encode`, when it has one, encodes each part."""
        if type(self).encode is not CharTokenizer.encode:
            return (self.encode(part) for part in parts)
        return (self._ids(part) for part in parts)

    def decode_ids(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def piece(self, i: int) -> str:
        return self.chars[int(i)]

    def decode(self, segment: Segment) -> str:
        return self.decode_ids(segment.ids.tolist())

    def save(self, directory: Path) -> None:
        (directory / self.FILE).write_text(json.dumps({"chars": self.chars}, ensure_ascii=False))

    def load(self, directory: Path) -> None:
        """Read the saved vocabulary, or a HuggingFace tokenizer.json of one character per token
        (capability "hf_tokenizer": what `hf_tokenizer` gives, e.g. a char run exported as GPT-2)."""
        path = directory / self.FILE
        if not path.exists() and (directory / HF_FILE).exists():
            self._set_vocab(hf_characters(directory / HF_FILE))
            return
        try:
            chars = json.loads(path.read_text(encoding="utf-8"))["chars"]
            assert isinstance(chars, list) and all(isinstance(c, str) and len(c) == 1 for c in chars) and chars
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise UserError(f"{path}: missing or corrupt char vocabulary") from None
        self._set_vocab(chars)

    def hf_tokenizer(self):
        """The vocabulary as a HuggingFace `tokenizers.Tokenizer` (one word per character, joined
        back without spaces): the same ids for every text this tokenizer encodes."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(self.chars)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok

    def examples(self) -> list[str]:
        """Samples for the conformance check."""
        return ["To be, or not to be", "", "\n\nROMEO:\n"]
