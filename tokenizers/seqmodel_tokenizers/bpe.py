"""Byte-level BPE tokenizer on HuggingFace `tokenizers` (GPT-2's scheme, trained in Rust).

Text is split by GPT-2's pre-tokenization regex, mapped to bytes, and merged by a BPE model
trained on the training split (`fit`). The 256 byte symbols are always in the vocabulary, so any
string -- characters never seen in training included -- encodes, and `decode` gives it back
exactly. The end-of-text token (``<|endoftext|>``) is a special token: the `lm` task puts its id
between documents. The whole state is the library's ``tokenizer.json``; a pretrained one can be
brought with ``path = "tokenizer.json"`` (then `fit` does not train).

A special token's string typed in the text (a document that mentions ``<|endoftext|>``) is by
default encoded as ordinary text, its bytes, so it never silently cuts a document in two; the
library's ``Tokenizer.encode_special_tokens`` does this. `specials_in_text` chooses instead to read
it as the special token, or to refuse the text (as tiktoken's ``disallowed_special``); added
tokens that are not special (a pretrained file's extra vocabulary) still match. Training
never learns a merge across such a string: the training texts are cut at every one (and, when
they are special tokens, the string itself is left out). Training streams the split's texts
(`fit_text.TextStream`), at most `fit_max_chars` characters of them, and reports what it read.

Long texts are cut before every newline that follows a non-space character: no GPT-2 pre-token
spans such a point and the regex has no look-behind, so the pieces encode exactly as the whole
text would. ASCII pieces go through a cache of pre-tokens (`bpe_words`: GPT-2's split in Python's
`re`, each distinct pre-token encoded once by the library), the others through the library's
parallel batch encoder; a text read in parts cut at such points (capability "parts": a large
file) trains and encodes part by part exactly as the whole text would, a worker process encoding
every other part (`bpe_encode`). The ids are always those of the library's `encode`.

References:
    Sennrich et al., "Neural Machine Translation of Rare Words with Subword Units", ACL 2016.
    Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019.
    https://huggingface.co/docs/tokenizers
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqmodel.config import path_field
from seqmodel.errors import UserError
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .bpe_encode import TextEncoder, pieces
from .fit_text import TextStream

FILE = "tokenizer.json"
BYTES = 256
SPECIALS_IN_TEXT = ("text", "special", "error")


@dataclass
class BPEConfig:
    """`[tokenizer] kind = "bpe"`."""

    vocab_size: int = 1000
    """Vocabulary size after training: 256 byte symbols, the special tokens, then merges."""
    min_frequency: int = 2
    """A pair must occur at least this often in the training split to be merged."""
    eot: str = "<|endoftext|>"
    """End-of-text special token, put between documents ("" for none)."""
    special_tokens: list[str] = field(default_factory=list)
    """Extra special tokens (never split, never merged), after the end-of-text token."""
    path: str = path_field()
    """A pretrained tokenizer.json to use instead of training (vocab_size is then ignored)."""
    position: str = "learned"
    """Position encoding of the text tokens: "learned", "rotary" or "none"."""
    specials_in_text: str = "text"
    """What a special token's string typed in the text becomes: "text" (its bytes, like any other
    text), "special" (the special token) or "error" (refuse the text, naming the token). The
    end-of-text ids the `lm` task puts between documents are ids, not text: always special."""
    fit_max_chars: int = 0
    """Train on at most this many characters of the training split, in document order (0: all)."""

    def specials(self) -> list[str]:
        return ([self.eot] if self.eot else []) + list(self.special_tokens)

    def validate(self) -> list[tuple[str, str]]:
        bad = []
        least = BYTES + len(self.specials()) + 1
        if self.vocab_size < least:
            bad.append(("vocab_size", f"must be at least {least} (256 bytes + the special tokens + one merge), "
                                      f"got {self.vocab_size}"))
        if self.min_frequency < 1:
            bad.append(("min_frequency", f"must be at least 1, got {self.min_frequency}"))
        if any(not s for s in self.special_tokens) or len(set(self.specials())) != len(self.specials()):
            bad.append(("special_tokens", "must be distinct non-empty strings, different from eot"))
        if self.position not in ("learned", "rotary", "none"):
            bad.append(("position", f"expected learned, rotary or none, got {self.position!r}"))
        if self.specials_in_text not in SPECIALS_IN_TEXT:
            bad.append(("specials_in_text", f"expected text, special or error, got {self.specials_in_text!r}"))
        if self.fit_max_chars < 0:
            bad.append(("fit_max_chars", f"must be 0 (no bound) or positive, got {self.fit_max_chars}"))
        return bad


def byte_symbols() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted: symbol -> byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(BYTES) if b not in keep)
    chars = {b: chr(b) for b in keep} | {b: chr(BYTES + k) for k, b in enumerate(extra)}
    return {c: b for b, c in chars.items()}


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer (no normaliser, no prefix space)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def read_tokenizer(path: Path) -> Tokenizer:
    """Load a tokenizer.json; a missing or unreadable file is a one-line `UserError`."""
    if not path.is_file():
        raise UserError(f"{path}: missing BPE tokenizer file (expected the `tokenizers` library's tokenizer.json)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the library raises bare `Exception` for every parse problem
        raise UserError(f"{path}: corrupt BPE tokenizer file: {err}") from None


def split_at(text: str, strings: list[str]) -> list[str]:
    """`text` cut before and after every occurrence of `strings` (longest first where they
    overlap); the occurrences are pieces of their own. Joined, the pieces are `text`."""
    if not any(s in text for s in strings):
        return [text]
    pattern = "(" + "|".join(map(re.escape, sorted(strings, key=len, reverse=True))) + ")"
    return [p for p in re.split(pattern, text) if p]


def _byte_level(tok: Tokenizer) -> tuple[bool, bool]:
    """(decoder is byte-level, texts may be cut into pieces) for a tokenizer's settings."""
    state = json.loads(tok.to_str())
    pre, dec = state.get("pre_tokenizer") or {}, state.get("decoder") or {}
    cuttable = (state.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                and not pre.get("add_prefix_space") and not any(re.search(r"\s", t["content"]) for t in state["added_tokens"]))
    return dec.get("type") == "ByteLevel", cuttable


class BPETokenizer:
    """Byte-level BPE over one text field; see the module docstring."""

    Config = BPEConfig
    FILE = FILE
    capabilities = ("pieces", "separator", "examples", "hf_tokenizer", "parts")
    eot_id: int | None = None
    """The end-of-text id (None without one), set by `fit`/`load`."""

    def __init__(self, config: BPEConfig, modality: str = "text") -> None:
        self.config, self.modality = config, modality
        self.tok: Tokenizer | None = None
        self.eot_id: int | None = None
        self._symbols = byte_symbols()

    # -- fitting and persistence ---------------------------------------------------------------
    def fit(self, values: Iterable[str]) -> None:
        """Train on the training split's texts, or adopt the configured pretrained file."""
        if self.config.path:
            tok = read_tokenizer(Path(self.config.path).expanduser())
            tok.add_special_tokens([s for s in self.config.specials() if tok.token_to_id(s) is None])
            self._adopt(tok, self.config.path)
            return
        stream = TextStream(values, self.config.fit_max_chars, "bpe tokenizer")
        tok = new_tokenizer()
        trainer = trainers.BpeTrainer(vocab_size=self.config.vocab_size, min_frequency=self.config.min_frequency,
                                      special_tokens=self.config.specials(), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(self._training_pieces(stream), trainer)
        if not stream.chars:
            raise UserError("bpe tokenizer: the training split has no text to train on")
        self._adopt(tok, "the trained tokenizer")
        merges = self._vocab_size - BYTES - len(self.config.specials())
        stream.report(f"{self._vocab_size:,} tokens ({merges:,} merges)")

    def _training_pieces(self, texts: Iterable[str]) -> Iterator[str]:
        """The texts as the trainer sees them: cut at typed special strings (see the module
        docstring) and into `pieces`."""
        specials, mode = self.config.specials(), self.config.specials_in_text
        for text in texts:
            if mode == "error":
                self._refuse_specials(text, specials, "the training split")
            for part in split_at(text, specials):
                if mode == "text" or part not in specials:
                    yield from pieces(part)

    @staticmethod
    def _refuse_specials(text: str, specials: list[str], where: str) -> None:
        """`specials_in_text = "error"`: a one-line error naming the first special string found."""
        found = [(i, s) for s in specials if (i := text.find(s)) >= 0]
        if found:
            i, s = min(found)
            raise UserError(f"bpe tokenizer: {where} contains the special token {s!r} at character {i:,} "
                            f'(specials_in_text = "error"; "text" encodes it as text, "special" as the token)')

    def _adopt(self, tok: Tokenizer, where: str) -> None:
        eot = self.config.eot
        self.eot_id = tok.token_to_id(eot) if eot else None
        if eot and self.eot_id is None:
            raise UserError(f"{where}: no end-of-text token {eot!r} in the vocabulary")
        tok.encode_special_tokens = self.config.specials_in_text != "special"
        self.tok = tok
        self._bytes_decoder, self._cuttable = _byte_level(tok)
        added = tok.get_added_tokens_decoder()
        self._encoder = TextEncoder(tok, self._cuttable)
        self._specials = {i: t.content for i, t in added.items()}
        self._special_strings = [t.content for t in added.values() if t.special]
        self._vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1

    def save(self, directory: Path) -> None:
        self._need().save(str(Path(directory) / FILE))

    def load(self, directory: Path) -> None:
        path = Path(directory) / FILE
        self._adopt(read_tokenizer(path), str(path))

    def _need(self) -> Tokenizer:
        if self.tok is None:
            raise RuntimeError("bpe tokenizer used before fit or load")
        return self.tok

    # -- the Tokenizer contract ----------------------------------------------------------------
    def spec(self) -> ModalitySpec:
        self._need()
        return ModalitySpec(self.modality, vocab_size=self._vocab_size, position=self.config.position)

    def encode_ids(self, text: str) -> np.ndarray:
        """Token ids of `text`, (T,) int64 (`bpe_encode`: long texts in pieces, ASCII through the
        pre-token cache, the rest through the parallel batch encoder)."""
        self._need()
        self._check(text)
        return self._encoder.encode(text)

    def _check(self, text: str) -> None:
        if self.config.specials_in_text == "error":
            self._refuse_specials(text, self._special_strings, "the text")

    def encode(self, value: str, *, train: bool = False) -> Segment:
        return Segment(self.modality, ids=torch.from_numpy(self.encode_ids(value)))

    def encode_parts(self, parts: Iterable[str]) -> Iterator[np.ndarray | Segment]:
        """The ids of a text given in parts cut before a newline that follows a non-space
        character (`seqmodel.plugin.Parts`): part by part, on every core (`bpe_encode.encode_stream`);
        joined first when this tokenizer's settings make such cuts inexact. A subclass's own
        `encode`, when it has one, encodes each part."""
        self._need()
        if type(self).encode is not BPETokenizer.encode:
            yield from (self.encode(part) for part in parts)
        elif not self._cuttable:
            yield self.encode_ids("".join(parts))
        else:
            yield from self._encoder.encode_stream(parts, self._check)

    def decode_ids(self, ids) -> str:
        """The text of a list of ids (invalid UTF-8 at a cut multi-byte character becomes U+FFFD)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        return self._need().decode(ids, skip_special_tokens=False)

    def decode(self, segment: Segment) -> str:
        return self.decode_ids(segment.ids)

    def piece(self, i: int) -> str:
        """The text of token `i`; bytes that are not whole UTF-8 characters show as ``<0xNN>``."""
        i = int(i)
        if i in self._specials or not self._bytes_decoder:
            return self._specials.get(i) or self._need().decode([i], skip_special_tokens=False)
        token = self._need().id_to_token(i)
        if token is None or not set(token) <= self._symbols.keys():
            return self._need().decode([i], skip_special_tokens=False)
        raw = bytes(self._symbols[c] for c in token)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "".join(chr(b) if b < 0x80 else f"<0x{b:02X}>" for b in raw)

    def hf_tokenizer(self) -> Tokenizer:
        """The state itself: a HuggingFace `tokenizers.Tokenizer` (a copy)."""
        return Tokenizer.from_str(self._need().to_str())

    def examples(self) -> list[str]:
        """Samples for the conformance check."""
        return ["To be, or not to be", "", "\n\nROMEO:\n", "naïve café 日本語 🎉\t\r\n  x"]
