"""FASTA source: sequences from FASTA files, or synthetic ones with planted motifs.

Every example is ``{"id": header, "sequence": residues}`` (synthetic examples also carry
``"label"``: 1 when a motif was planted, else 0). Records keep their order; the last
`val_fraction` of them is the test split, the `val_fraction` before that the validation split,
the rest training.

Synthetic data is a function of the config alone (numpy's PCG64 seeded by `seed`):

- dna: an order-1 Markov chain in which each base is followed by the next one of ACGT with
  probability 0.55 (0.15 for each other base), with promoter/restriction-site motifs planted
  (TATAAT, TTGACA, GAATTC, CACGTG).
- protein: antimicrobial-peptide-like: residues drawn from a cationic/hydrophobic-rich
  composition (K, R, L, A, G, I, W, F, V enriched), with AMP fragments planted (KWKLFKKI from
  cecropin A, GLFDIIKK from aurein 1.2, RRWQWR from lactoferricin).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from seqmodel.errors import UserError
from seqmodel.plugin import check_split

from .tokenizer import ALPHABETS

MOTIFS = {"dna": ["TATAAT", "TTGACA", "GAATTC", "CACGTG"], "protein": ["KWKLFKKI", "GLFDIIKK", "RRWQWR"]}
LENGTHS = {"dna": (80, 160), "protein": (12, 48)}
AMP_WEIGHTS = {"K": 4, "R": 3, "L": 4, "A": 3, "G": 3, "I": 3, "W": 2, "F": 2, "V": 2}


@dataclass
class FastaConfig:
    """`[data] source = "fasta"`."""

    path: str = ""
    """FASTA file or glob pattern (``.gz`` allowed), read in sorted order; empty: synthetic sequences."""
    uppercase: bool = True
    """Upper-case sequences read from files (soft-masked lower-case residues become ordinary ones)."""
    alphabet: str = "dna"
    """Synthetic data: "dna" or "protein"."""
    count: int = 2000
    """Synthetic data: number of sequences."""
    min_length: int = 0
    """Synthetic data: shortest sequence (0: 80 for dna, 12 for protein)."""
    max_length: int = 0
    """Synthetic data: longest sequence (0: 160 for dna, 48 for protein)."""
    motifs: list[str] | None = None
    """Synthetic data: motifs to plant (default: see the module docstring)."""
    motif_rate: float = 0.5
    """Synthetic data: fraction of sequences that carry a planted motif."""
    seed: int = 0
    """Synthetic data: random seed."""
    val_fraction: float = 0.1
    """Fraction of the records in each of the validation and test splits (the tail of the file)."""

    def lengths(self) -> tuple[int, int]:
        lo, hi = LENGTHS.get(self.alphabet, (1, 1))
        return self.min_length or lo, self.max_length or hi

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = []
        if self.alphabet not in ALPHABETS:
            return [("alphabet", f"expected one of {', '.join(ALPHABETS)}, got {self.alphabet!r}")]
        lo, hi = self.lengths()
        if not 1 <= lo <= hi:
            bad.append(("max_length", f"need 1 <= min_length <= max_length, got {lo} and {hi}"))
        for m in self.motifs or MOTIFS[self.alphabet]:
            if not m or set(m) - set(ALPHABETS[self.alphabet]) or len(m) > lo:
                key = "motifs" if self.motifs else "min_length"
                bad.append((key, f"motif {m!r} must be 1 to min_length = {lo} letters of {ALPHABETS[self.alphabet]}"))
        if self.count < 3 and not self.path:
            bad.append(("count", f"must be at least 3 (one record per split), got {self.count}"))
        if not 0 <= self.motif_rate <= 1:
            bad.append(("motif_rate", f"must be in [0, 1], got {self.motif_rate}"))
        if not 0 < self.val_fraction < 0.5:
            bad.append(("val_fraction", f"must be in (0, 0.5), got {self.val_fraction}"))
        return bad


def read_fasta(path: str, uppercase: bool = True) -> list[dict]:
    """Records ``{"id", "sequence"}`` of one FASTA file; blank and ``;`` lines are skipped."""
    records, header, parts = [], None, []
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith(";"):
                    continue
                if line.startswith(">"):
                    if header is not None:
                        records.append({"id": header, "sequence": "".join(parts)})
                    header, parts = line[1:].strip() or f"{Path(path).name}:{lineno}", []
                elif header is None:
                    raise UserError(f"{path}:{lineno}: sequence data before the first '>' header; is this a FASTA file?")
                else:
                    parts.append("".join(line.split()).upper() if uppercase else "".join(line.split()))
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise UserError(f"{path}: cannot read as a FASTA file: {err}") from None
    if header is not None:
        records.append({"id": header, "sequence": "".join(parts)})
    return records


def _background(alphabet: str) -> tuple[np.ndarray, np.ndarray]:
    """(first-residue probabilities (A,), transition matrix (A, A)) of the synthetic background."""
    letters = ALPHABETS[alphabet]
    A = len(letters)
    if alphabet == "dna":
        trans = np.full((A, A), 0.15)
        trans[np.arange(A), (np.arange(A) + 1) % A] = 0.55
        return np.full(A, 1 / A), trans
    weights = np.array([AMP_WEIGHTS.get(c, 0.5) for c in letters])
    first = weights / weights.sum()
    return first, np.tile(first, (A, 1))


def synthetic_records(cfg: FastaConfig) -> list[dict]:
    """`cfg.count` sequences with planted motifs; see the module docstring."""
    rng = np.random.default_rng(cfg.seed)
    letters = np.array(list(ALPHABETS[cfg.alphabet]))
    first, trans = _background(cfg.alphabet)
    lo, hi = cfg.lengths()
    lengths = rng.integers(lo, hi + 1, cfg.count)
    codes = np.empty((cfg.count, hi), dtype=np.int64)  # (N, hi): one Markov chain per row
    codes[:, 0] = rng.choice(len(letters), cfg.count, p=first)
    cum = trans.cumsum(1)
    for t in range(1, hi):
        u = rng.random(cfg.count)[:, None]
        codes[:, t] = np.minimum((u > cum[codes[:, t - 1]]).sum(1), len(letters) - 1)
    motifs = cfg.motifs or MOTIFS[cfg.alphabet]
    planted = rng.random(cfg.count) < cfg.motif_rate
    which = rng.integers(len(motifs), size=cfg.count)
    where = rng.random(cfg.count)
    records = []
    for i in range(cfg.count):
        seq = "".join(letters[codes[i, : lengths[i]]])
        if planted[i]:
            m = motifs[which[i]]
            at = int(where[i] * (lengths[i] - len(m) + 1))
            seq = seq[:at] + m + seq[at + len(m) :]
        records.append({"id": f"synthetic-{i}", "sequence": seq, "label": int(planted[i])})
    return records


class FastaSource:
    """See the module docstring."""

    Config = FastaConfig

    def __init__(self, config: FastaConfig) -> None:
        self.config = config
        self.fields = ("id", "sequence") if config.path else ("id", "sequence", "label")
        self._records: list[dict] | None = None
        self._files: list[str] = []

    def files(self) -> list[str]:
        hits = sorted(glob.glob(os.path.expanduser(self.config.path), recursive=True))
        hits = [h for h in hits if os.path.isfile(h)]
        if not hits:
            raise UserError(f"path: {self.config.path!r} matches no file")
        return hits

    def records(self) -> list[dict]:
        """Every record, in order (read or generated once)."""
        if self._records is None:
            if self.config.path:
                self._files = self.files()
                records = [r for f in self._files for r in read_fasta(f, self.config.uppercase)]
                if len(records) < 3:
                    raise UserError(f"path: {self.config.path!r} holds {len(records)} FASTA record(s); "
                                    f"at least 3 are needed (one per split)")
            else:
                records = synthetic_records(self.config)
            self._records = records
        return self._records

    def split(self, name: str) -> list[dict]:
        check_split(name)
        records = self.records()
        n = len(records)
        held = max(1, round(n * self.config.val_fraction))
        bounds = {"train": (0, n - 2 * held), "val": (n - 2 * held, n - held), "test": (n - held, n)}
        start, stop = bounds[name]
        return records[start:stop]

    def identity(self) -> dict:
        if not self.config.path:
            return {"source": "fasta", "synthetic": {k: v for k, v in asdict(self.config).items() if k != "path"}}
        self.records()
        digest = hashlib.sha256()
        for f in self._files:
            digest.update(f.encode() + b"\0" + Path(f).read_bytes())
        return {"source": "fasta", "files": self._files, "sha256": digest.hexdigest()}
