"""Byte-level BPE of ASCII text through a cache of pre-tokens: the same ids as the library's
encoder, several times faster.

Byte-level BPE encodes each pre-token of GPT-2's split on its own, so a text's ids are its
pre-tokens' ids one after the other. The library spends most of its time on per-pre-token
bookkeeping (normalized strings with byte alignments, a string per token, their allocation and
release: about half the time is in malloc and free, a tenth in the regex). On ASCII text GPT-2's
regex has an exact equivalent in Python's `re` (``\\p{L}`` is ``[A-Za-z]``, ``\\p{N}`` is ``[0-9]``
and ``\\s`` is ``[\\t\\n\\v\\f\\r ]``), so here the text is split by `re`, each distinct pre-token is
encoded once by the tokenizer itself (in one parallel batch), and a pre-token seen before costs a
dict lookup.

Only texts this holds for come here (`WordCache.takes`): ASCII, holding no added token's string
(which the library matches before splitting), for a tokenizer without normalizer, truncation or
padding whose pre-tokenizer is GPT-2's byte-level split alone and whose model is a BPE without
dropout (`eligible`).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence

import numpy as np

from tokenizers import Tokenizer

GPT2_ASCII = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""", re.ASCII)
LIMIT = 1 << 18  # distinct pre-tokens kept; the cache starts again empty beyond (about 40 MB)


def eligible(tok: Tokenizer) -> bool:
    """Whether `tok` encodes ASCII text pre-token by pre-token through GPT-2's split (see the
    module docstring)."""
    state = json.loads(tok.to_str())
    pre, model = state.get("pre_tokenizer") or {}, state.get("model") or {}
    return (state.get("normalizer") is None and tok.truncation is None and tok.padding is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
            and model.get("type") == "BPE" and model.get("dropout") is None)


class WordCache:
    """Pre-token -> ids for one tokenizer state (see the module docstring). The ids of the cached
    pre-tokens are kept in one flat array, so a text's ids are gathered by numpy."""

    def __init__(self, tok: Tokenizer, added: Sequence[str], limit: int = LIMIT) -> None:
        self.tok, self.added, self.limit = tok, tuple(added), limit
        self._clear()

    def _clear(self) -> None:
        self.index: dict[str, int] = {}  # pre-token -> its number
        self.flat = np.zeros(0, dtype=np.int64)  # the ids of every cached pre-token, in number order
        self.starts = np.zeros(0, dtype=np.int64)  # where each pre-token's ids begin in `flat`
        self.lengths = np.zeros(0, dtype=np.int64)

    def takes(self, text: str) -> bool:
        """Whether `text` encodes exactly here: ASCII, without an added token's string."""
        return text.isascii() and not any(s in text for s in self.added)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text (int64), for texts `takes` accepts."""
        words = [GPT2_ASCII.findall(text) for text in texts]
        try:
            numbers = self._numbers(words)
        except KeyError:  # pre-tokens not seen before: encoded once, all together
            self._add({w for ws in words for w in ws if w not in self.index}, words)
            numbers = self._numbers(words)
        lengths = self.lengths[numbers]
        ends = np.cumsum(lengths)
        before = ends - lengths  # where each pre-token's ids go in the output
        at = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(before - self.starts[numbers], lengths)
        cuts = np.concatenate([[0], ends])[np.cumsum([len(ws) for ws in words])[:-1]]
        return np.split(self.flat[at], cuts)

    def _numbers(self, words: list[list[str]]) -> np.ndarray:
        find = self.index.__getitem__
        return np.fromiter(itertools.chain.from_iterable(map(find, ws) for ws in words), dtype=np.int64,
                           count=sum(map(len, words)))

    def _add(self, new: set[str], words: list[list[str]]) -> None:
        if len(self.index) + len(new) > self.limit:
            self._clear()
            new = {w for ws in words for w in ws}
        if not new:
            return
        new_words = list(new)
        batch = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)  # _fast: tokenizers >= 0.21
        ids = [e.ids for e in batch(new_words, add_special_tokens=False)]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        self.index.update(zip(new_words, range(len(self.index), len(self.index) + len(new_words))))
        self.starts = np.concatenate([self.starts, len(self.flat) + np.cumsum(lengths) - lengths])
        self.lengths = np.concatenate([self.lengths, lengths])
        self.flat = np.concatenate([self.flat, np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)])
