"""Spoken digit strings synthesised with espeak-ng: the speech recipe's embedded data.

Each example is ``{"audio": path of a 16 kHz WAV file, "text": "314", "voice": "en-us+f3"}``.
Synthesis is deterministic and cached (see `seqmodel_plugins.spoken_digits_data`); the splits
hold out whole voices, so the test split measures transcription of speakers never heard in
training.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqmodel.capabilities import check_split
from seqmodel.config import path_field

from ..spoken_digits_data import VERSION, split_by_voice, synthesize
from .text import cache_root


@dataclass
class SpokenDigitsConfig:
    """`[data] source = "spoken_digits"`."""

    n_utterances: int = 6000
    """Utterances to synthesise (1-6 digits each), over all splits."""
    seed: int = 0
    """Fixes texts, voices, speeds, pitches, noise and the voice split."""
    noise: float = 0.0
    """White background noise RMS as a fraction of the speech RMS (0: clean; 0.1 is about 20 dB SNR)."""
    cache_dir: str = path_field()
    """Where the synthesised WAV files are cached (default: $SEQMODEL_CACHE or the user cache directory)."""
    val_fraction: float = 0.1
    """Share of the voices held out for validation."""
    test_fraction: float = 0.15
    """Share of the voices held out for testing."""
    progress: bool = True
    """Show a progress bar while synthesising."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = []
        if self.n_utterances < 1:
            bad.append(("n_utterances", f"must be at least 1, got {self.n_utterances}"))
        if self.noise < 0:
            bad.append(("noise", f"must not be negative, got {self.noise}"))
        for key in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, key) < 1:
                bad.append((key, f"must be in [0, 1), got {getattr(self, key)}"))
        if self.val_fraction + self.test_fraction >= 1:
            bad.append(("test_fraction", f"val_fraction + test_fraction must be below 1, got "
                                         f"{self.val_fraction} + {self.test_fraction}"))
        return bad


class SpokenDigitsSource:
    """See the module docstring."""

    Config = SpokenDigitsConfig
    fields = ("audio", "text")

    def __init__(self, config: SpokenDigitsConfig) -> None:
        self.config = config
        self._splits: dict[str, list[dict]] | None = None

    def splits(self) -> dict[str, list[dict]]:
        """All three splits, synthesised (or read from the cache) on first use."""
        if self._splits is None:
            c = self.config
            records = synthesize(cache_root(c.cache_dir), c.n_utterances, c.seed, c.noise, progress=c.progress)
            self._splits = split_by_voice(records, c.seed, c.val_fraction, c.test_fraction)
        return self._splits

    def split(self, name: str) -> list[dict]:
        check_split(name)
        return self.splits()[name]

    def identity(self) -> dict:
        c = self.config
        return {"source": "spoken_digits", "version": VERSION, "n_utterances": c.n_utterances, "seed": c.seed,
                "noise": c.noise, "val_fraction": c.val_fraction, "test_fraction": c.test_fraction}
