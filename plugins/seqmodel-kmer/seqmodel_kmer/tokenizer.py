"""k-mer tokenizer for DNA and protein sequences.

A sequence over the alphabet (ACGT, or the 20 standard amino acids) is cut into windows of `k`
residues that start every `stride` residues; each window is one id in a fixed vocabulary of all
A**k k-mers. Residues left over at the end (fewer than `stride`, or a sequence shorter than `k`)
become one *tail* token: the vocabulary also holds every string of 1 .. k-1 residues. So

    decode(encode(s)) == s   for every 1 <= stride <= k

because decoding writes the first token whole, then the last `stride` residues of each later
k-mer, then each tail token whole. A stride above `k` would skip residues, so it is rejected.

Special ids: 0 `<pad>`, 1 `<unk>` (a window with a character outside the alphabet, when
``unknown = "replace"``; decodes to N or X, lossy), 2 end-of-sequence. A newline separates
sequences in both directions: ``encode("ACGT\\nGG")`` restarts the k-mer frame after an
end-of-sequence id, which is also the id the lm task puts between documents (`eot_id`).

References: DNABERT (Ji et al. 2021, overlapping k-mers, stride 1); Nucleotide Transformer
(Dalla-Torre et al. 2023, non-overlapping 6-mers, stride k).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from seqmodel.errors import UserError
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment

ALPHABETS = {"dna": "ACGT", "protein": "ACDEFGHIKLMNPQRSTVWY"}
UNKNOWN_LETTER = {"dna": "N", "protein": "X"}
PAD, UNK, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<unk>", "\n")
MAX_VOCAB = 1 << 20


@dataclass
class KmerConfig:
    """`[tokenizer] kind = "kmer"`."""

    k: int = 3
    """Residues per token."""
    alphabet: str = "dna"
    """"dna" (ACGT) or "protein" (the 20 standard amino acids, one-letter codes)."""
    stride: int = 1
    """Residues between the starts of consecutive k-mers: 1 (overlapping) .. k (non-overlapping)."""
    unknown: str = "error"
    """Characters outside the alphabet: "error" (name them) or "replace" (their k-mers become <unk>)."""
    position: str = "learned"
    """Position encoding of the tokens: "learned", "rotary" or "none"."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = []
        if self.alphabet not in ALPHABETS:
            bad.append(("alphabet", f"expected one of {', '.join(ALPHABETS)}, got {self.alphabet!r}"))
        if self.k < 1:
            bad.append(("k", f"must be at least 1, got {self.k}"))
        elif not 1 <= self.stride <= self.k:
            bad.append(("stride", f"must be between 1 and k = {self.k} (a larger stride skips residues), got {self.stride}"))
        elif self.alphabet in ALPHABETS and len(ALPHABETS[self.alphabet]) ** self.k > MAX_VOCAB:
            bad.append(("k", f"{self.alphabet} {self.k}-mers number {len(ALPHABETS[self.alphabet]) ** self.k:,}; "
                             f"at most {MAX_VOCAB:,} fit the vocabulary (one embedding row each)"))
        if self.unknown not in ("error", "replace"):
            bad.append(("unknown", f"expected 'error' or 'replace', got {self.unknown!r}"))
        if self.position not in ("learned", "rotary", "none"):
            bad.append(("position", f"expected learned, rotary or none, got {self.position!r}"))
        return bad


class KmerVocab:
    """Ids of the specials, all k-mers, then all shorter tail strings (lengths 1 .. k-1).

    A string of n residues with letter codes c_0 .. c_{n-1} has id offset[n] + sum c_i A^(n-1-i).
    """

    def __init__(self, letters: str, k: int) -> None:
        self.letters, self.k, A = letters, k, len(letters)
        self.offset = {k: len(SPECIALS)}
        top = len(SPECIALS) + A**k
        for n in range(1, k):
            self.offset[n], top = top, top + A**n
        self.size = top
        self._blocks = sorted((o, n) for n, o in self.offset.items())
        self._pieces: dict[int, str] = {}
        self.table = np.full(128, -1, dtype=np.int64)
        self.table[[ord(c) for c in letters]] = np.arange(A)

    def codes(self, text: str) -> np.ndarray:
        """Letter codes (n,) of `text`; -1 for characters outside the alphabet."""
        raw = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        return np.where(raw < 128, self.table[np.minimum(raw, 127)], -1)

    def ids(self, windows: np.ndarray) -> np.ndarray:
        """Ids (m,) of m windows of equal length n, (m, n) codes; <unk> where a code is -1."""
        n = windows.shape[1]
        powers = len(self.letters) ** np.arange(n - 1, -1, -1, dtype=np.int64)
        return np.where((windows < 0).any(1), UNK, self.offset[n] + windows @ powers)

    def piece(self, i: int) -> str:
        """The text of id `i` (a k-mer, a tail string, or a special)."""
        if i in self._pieces:
            return self._pieces[i]
        if not 0 <= i < self.size:
            raise ValueError(f"kmer tokenizer: id {i} is outside the vocabulary of {self.size}")
        if i < len(SPECIALS):
            return SPECIALS[i]
        start, n = self._blocks[bisect.bisect_right(self._blocks, (i, self.k + 1)) - 1]
        rest, out = i - start, []
        for _ in range(n):
            rest, r = divmod(rest, len(self.letters))
            out.append(self.letters[r])
        self._pieces[i] = "".join(reversed(out))
        return self._pieces[i]


class KmerTokenizer:
    """See the module docstring. The vocabulary follows from the config; `fit` checks the data."""

    Config = KmerConfig
    FILE = "kmer.json"
    capabilities = ("pieces", "separator", "examples")
    eot_id = EOS

    def __init__(self, config: KmerConfig, modality: str = "sequence") -> None:
        self.config, self.modality = config, modality
        self._set_state(config.alphabet, config.k, config.stride)

    def _set_state(self, alphabet: str, k: int, stride: int) -> None:
        self.alphabet, self.k, self.stride = alphabet, k, stride
        self.vocab = KmerVocab(ALPHABETS[alphabet], k)

    def spec(self) -> ModalitySpec:
        return ModalitySpec(self.modality, vocab_size=self.vocab.size, position=self.config.position)

    def _check_unknown(self, chars: set[str]) -> None:
        unknown = sorted(chars - set(self.vocab.letters) - {"\n"})
        if unknown and self.config.unknown == "error":
            raise UserError(f"kmer tokenizer: {len(unknown)} character(s) outside the {self.alphabet} alphabet "
                            f"{self.vocab.letters}: {''.join(unknown[:20])!r} (set [tokenizer] unknown = \"replace\" "
                            f"to map their k-mers to <unk>)")

    def fit(self, values: Iterable[str]) -> None:
        """Check the training sequences (strings over the alphabet); the vocabulary is fixed."""
        seen: set[str] = set()
        count = 0
        for value in values:
            seen.update(self._text(value))
            count += 1
        if not count:
            raise UserError("kmer tokenizer: the training split has no sequences")
        self._check_unknown(seen)

    @staticmethod
    def _text(value) -> str:
        if not isinstance(value, str):
            raise UserError(f"kmer tokenizer: expected a sequence string, got {type(value).__name__}")
        return value

    def encode_line(self, line: str) -> np.ndarray:
        """Ids of one sequence (no newline): k-mers every `stride` residues, then a tail token."""
        codes = self.vocab.codes(line)
        if (codes < 0).any():
            self._check_unknown(set(line))
        n, k = len(codes), self.k
        if n < k:
            return self.vocab.ids(codes[None]) if n else np.zeros(0, dtype=np.int64)
        starts = np.arange(0, n - k + 1, self.stride)
        ids = self.vocab.ids(sliding_window_view(codes, k)[starts])
        tail = n - (int(starts[-1]) + k)
        return np.append(ids, self.vocab.ids(codes[None, n - tail :])) if tail else ids

    def encode(self, value: str, *, train: bool = False) -> Segment:
        parts = []
        for j, line in enumerate(self._text(value).split("\n")):
            if j:
                parts.append(np.array([EOS], dtype=np.int64))
            parts.append(self.encode_line(line))
        return Segment(self.modality, ids=torch.from_numpy(np.concatenate(parts).astype(np.int64)))

    def piece(self, i: int) -> str:
        return self.vocab.piece(int(i))

    def decode_ids(self, ids: Iterable[int]) -> str:
        """The sequence(s) of `ids`: first token whole, later k-mers add their last `stride` residues."""
        out, first, step = [], True, self.stride
        for i in map(int, ids):
            if i == PAD:
                continue
            if i == EOS:
                out.append("\n")
                first = True
                continue
            text = UNKNOWN_LETTER[self.alphabet] * self.k if i == UNK else self.vocab.piece(i)
            out.append(text if first or len(text) < self.k else text[self.k - step :])
            first = False
        return "".join(out)

    def decode(self, segment: Segment) -> str:
        return self.decode_ids(segment.ids.tolist())

    def save(self, directory: Path) -> None:
        state = {"alphabet": self.alphabet, "k": self.k, "stride": self.stride, "vocab_size": self.vocab.size}
        (Path(directory) / self.FILE).write_text(json.dumps(state))

    def load(self, directory: Path) -> None:
        path = Path(directory) / self.FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            alphabet, k, stride = state["alphabet"], state["k"], state["stride"]
            assert alphabet in ALPHABETS and isinstance(k, int) and isinstance(stride, int) and 1 <= stride <= k
            self._set_state(alphabet, k, stride)
            assert self.vocab.size == state["vocab_size"]
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise UserError(f"{path}: missing or corrupt k-mer tokenizer state") from None

    def examples(self) -> list[str]:
        """Samples for the conformance check (`seqmodel plugins check kmer`)."""
        if self.alphabet == "dna":
            return ["ACGTACGTTGCA", "GATTACA", "AC", "", "TTGACAATTTATAATG\nCACGTG"]
        return ["GIGKFLHSAKKFGKAFVGEIMNS", "KWKLFKKI", "RR", "", "GLFDIIKKIAESF\nRRWQWR"]
