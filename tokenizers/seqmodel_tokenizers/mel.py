"""Mel-spectrogram slice tokenizer: a sound becomes a sequence of log-mel slices in time order.

A waveform (any sample rate; resampled), an audio file path (WAV, FLAC, OGG) or a `datasets`
Audio value (a dict with "array" and "sampling_rate", or the torchcodec decoder of datasets 4)
is turned into Whisper's log-mel features (16 kHz, 25 ms window, 10 ms hop, 80 mel bands,
log10 clamped to 8 decades below the peak and rescaled; T samples give T // 160 frames; see
`mel_features.log_mel`), which are cut into non-overlapping slices of `frames` frames: one
continuous segment of shape (N, frames * n_mels) whose positions are the slice indices 0..N-1.
The last slice is padded with the utterance's quietest value (the clamped floor). Training may
apply SpecAugment frequency and time masking (`augment = true`). The saved state records the
front end's settings and `mel_features.VERSION`: a run whose features were computed differently
is refused rather than continued with other features.

References: Radford et al. 2022 (Whisper front end); Park et al. 2019 (SpecAugment).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqmodel.errors import UserError
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment

from .audio import load_audio
from .mel_features import VERSION, MelConfig, log_mel, spec_augment

POSITIONS = ("learned", "rotary", "none")


@dataclass
class MelTokenizerConfig:
    """`[tokenizer] kind = "mel"`."""

    sample_rate: int = 16000
    """Rate (Hz) every waveform is resampled to before the STFT."""
    n_fft: int = 400
    """STFT size and Hann window length in samples (25 ms at 16 kHz)."""
    hop_length: int = 160
    """Samples between successive frames (10 ms at 16 kHz)."""
    n_mels: int = 80
    """Mel bands per frame."""
    frames: int = 4
    """Frames per token: each token is a slice of `frames` x `n_mels` features."""
    position: str = "learned"
    """Position encoding of the slice index: "learned", "rotary" or "none"."""
    augment: bool = False
    """Training only: SpecAugment frequency and time masking."""
    freq_mask: int = 15
    """Largest width of a frequency mask, in mel bands."""
    time_mask: int = 20
    """Largest width of a time mask, in frames."""
    n_masks: int = 2
    """Frequency masks and, separately, time masks per utterance."""
    cache: bool = True
    """Keep each audio file's features in memory after the first encode (files are read once)."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = [(k, f"must be at least 1, got {getattr(self, k)}")
               for k in ("sample_rate", "n_fft", "hop_length", "n_mels", "frames") if getattr(self, k) < 1]
        bad += [(k, f"must not be negative, got {getattr(self, k)}")
                for k in ("freq_mask", "time_mask", "n_masks") if getattr(self, k) < 0]
        if self.n_fft >= 1 and self.n_mels > self.n_fft // 2 + 1:
            bad.append(("n_mels", f"must be at most n_fft // 2 + 1 = {self.n_fft // 2 + 1}, got {self.n_mels}"))
        if self.position not in POSITIONS:
            bad.append(("position", f"expected one of {', '.join(POSITIONS)}, got {self.position!r}"))
        return bad

    def mel(self) -> MelConfig:
        return MelConfig(self.sample_rate, self.n_fft, self.hop_length, self.n_mels)


class MelTokenizer:
    """See the module docstring. Stateless apart from its config; `fit` only checks the data."""

    Config = MelTokenizerConfig
    FILE = "mel.json"
    capabilities = ("augment", "read_file", "examples", "compare", "preprocessing")
    STATE_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "frames")

    def __init__(self, config: MelTokenizerConfig, modality: str = "audio") -> None:
        self.config, self.modality = config, modality
        self.mel_config = config.mel()
        self._cache: dict[str, torch.Tensor] = {}

    def spec(self) -> ModalitySpec:
        """Continuous tokens of width frames * n_mels at 1-D slice positions."""
        return ModalitySpec(self.modality, width=self.config.frames * self.config.n_mels, position=self.config.position)

    def fit(self, values: Iterable[Any]) -> None:
        """Nothing to learn; fails early (naming the problem) if the training split is empty."""
        if next(iter(values), None) is None:
            raise UserError("mel tokenizer: the training split has no audio")

    # -- features ----------------------------------------------------------------------------
    def read_file(self, path: str | os.PathLike) -> str:
        """Check that an audio file decodes (one-line `UserError` if not); returns the path."""
        self.features(str(path))
        return str(path)

    def waveform(self, value: Any) -> tuple[torch.Tensor, int]:
        """(mono waveform (T,), sample rate) of a path, a `datasets` Audio value (a dict with
        "array" and "sampling_rate", or a torchcodec decoder), a (wave, rate) pair, or a bare
        1-D array taken to be at `sample_rate` already."""
        if isinstance(value, (str, os.PathLike)):
            with _quiet_c_stderr():
                return load_audio(value)
        if isinstance(value, dict):
            if "array" in value and "sampling_rate" in value:
                return _mono(value["array"], "audio dict 'array'"), int(value["sampling_rate"])
            if value.get("path"):
                with _quiet_c_stderr():
                    return load_audio(value["path"])
            raise UserError(f"mel tokenizer: an audio dict needs 'array' and 'sampling_rate' (or 'path'); "
                            f"got keys {sorted(value)}")
        if hasattr(value, "get_all_samples"):  # datasets >= 4 decodes Audio with torchcodec
            samples = value.get_all_samples()
            return _mono(samples.data, "decoded audio"), int(samples.sample_rate)
        if isinstance(value, tuple) and len(value) == 2 and np.isscalar(value[1]):
            return _mono(value[0], "waveform"), int(value[1])
        if isinstance(value, (np.ndarray, torch.Tensor, list)):
            return _mono(value, "waveform"), self.config.sample_rate
        raise UserError(f"mel tokenizer: cannot use {type(value).__name__} as audio; expected a file path, "
                        f"a waveform, or a dict with 'array' and 'sampling_rate'")

    def features(self, value: Any) -> torch.Tensor:
        """Log-mel features (frames, n_mels) of one sound (cached per file path)."""
        key = str(value) if isinstance(value, (str, os.PathLike)) and self.config.cache else None
        if key is not None and key in self._cache:
            return self._cache[key]
        wave, rate = self.waveform(value)
        if rate < 1:
            raise UserError(f"mel tokenizer: sample rate must be positive, got {rate}")
        try:
            feats = log_mel(wave, rate, self.mel_config)
        except ValueError:
            seconds = self.config.hop_length / self.config.sample_rate
            where = f"{value}: " if key is not None or isinstance(value, (str, os.PathLike)) else "mel tokenizer: "
            raise UserError(f"{where}audio too short ({wave.shape[0]} samples at {rate} Hz); "
                            f"expected at least {seconds * 1000:.0f} ms of sound") from None
        if key is not None:
            self._cache[key] = feats
        return feats

    # -- tokens ------------------------------------------------------------------------------
    def encode(self, value: Any, *, train: bool = False, generator: torch.Generator | None = None) -> Segment:
        """One sound -> Segment(values (N, frames * n_mels), positions 0..N-1).

        Args:
            value: audio file path, waveform, (waveform, rate) pair or `datasets` Audio dict.
            train: apply SpecAugment masking when the config's `augment` is on.
            generator: the masking's randomness (default: torch's global RNG).
        """
        feats = self.features(value)  # (frames, n_mels)
        if train and self.config.augment:
            g = generator if generator is not None else torch.default_generator
            feats = spec_augment(feats, g, self.config.freq_mask, self.config.time_mask, self.config.n_masks)
        return Segment(self.modality, values=slice_frames(feats, self.config.frames))

    def decode(self, segment: Segment) -> torch.Tensor:
        """The log-mel features (N * frames, n_mels) of a segment, slices put back in position order
        (the last slice's padding included)."""
        order = torch.argsort(segment.positions if segment.positions.dim() == 1 else segment.positions[:, 0])
        return segment.values[order].reshape(-1, self.config.n_mels)

    def seconds(self, segment: Segment) -> float:
        """Duration covered by a segment's slices, in seconds."""
        return len(segment) * self.config.frames * self.config.hop_length / self.config.sample_rate

    def preprocessing(self) -> dict:
        """What `read_file` and `encode` (not training) do to a sound file, with the settings.
        A description, not an exact recipe outside seqmodel: the resampler and the mel filterbank
        are torchaudio's."""
        c = self.config
        return {
            "kind": "log-mel slices",
            "steps": [
                "read: soundfile.read(path, dtype='float32'); channels averaged to mono; clipped to [-1, 1]",
                ("resample to sample_rate with torchaudio.functional.resample (its default sinc filter) when the "
                 "file's rate differs"),
                ("log-mel: Whisper's front end; for 16 kHz input with Whisper's settings the frames are "
                 "whisper.log_mel_spectrogram(x, padding=N)[:, : T // hop_length].T for any N >= n_fft // 2 + hop_length "
                 "(seqmodel_tokenizers.mel_features.log_mel)"),
                ("slices: (frames_total, n_mels) -> (ceil(frames_total / frames), frames * n_mels), frame-major "
                 "within a slice; the last slice padded with the minimum of the features"),
                "positions: the slice index 0..N-1",
            ],
            "sample_rate": c.sample_rate, "n_fft": c.n_fft, "hop_length": c.hop_length, "n_mels": c.n_mels,
            "frames": c.frames, "log_mel_version": VERSION, "positions": "index",
        }

    # -- persistence -------------------------------------------------------------------------
    def state(self) -> dict:
        """What the features depend on: the front end's settings and the log-mel version."""
        return {**{k: v for k, v in asdict(self.config).items() if k in self.STATE_KEYS}, "log_mel_version": VERSION}

    def save(self, directory: Path) -> None:
        (directory / self.FILE).write_text(json.dumps(self.state()))

    def load(self, directory: Path) -> None:
        """Check that the saved front end matches this one (the run recipe is saved with it)."""
        path = directory / self.FILE
        try:
            state = json.loads(path.read_text())
            assert isinstance(state, dict)
        except (OSError, ValueError, AssertionError):
            raise UserError(f"{path}: missing or corrupt mel tokenizer state") from None
        saved = state.pop("log_mel_version", 1)
        if saved != VERSION:
            raise UserError(f"{path}: this run's audio features come from log-mel front end version {saved}; this "
                            f"seqmodel computes version {VERSION} (Whisper's exact edge frames): start a new run")
        mine = self.state()
        mine.pop("log_mel_version")
        if state != mine:
            raise UserError(f"{path}: saved mel front end {state} differs from the recipe's {mine}")

    def same(self, value: Any, decoded: torch.Tensor) -> bool:
        """`decode` gives the log-mel features back (audio is not recoverable): they must match
        the value's own features (the last slice may be padded)."""
        f = self.features(value)
        return decoded.shape[0] >= len(f) and bool(torch.allclose(decoded[: len(f)], f, atol=1e-5))

    def examples(self) -> list[Any]:
        """Samples for the conformance check: a tone at 8 kHz and noise at the model's rate."""
        t = np.arange(4000) / 8000
        tone = {"array": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), "sampling_rate": 8000}
        noise = np.random.default_rng(0).uniform(-0.3, 0.3, self.config.sample_rate // 2).astype(np.float32)
        return [tone, noise]


def slice_frames(features: torch.Tensor, frames: int) -> torch.Tensor:
    """(T, n_mels) features -> (ceil(T / frames), frames * n_mels) slices, frame-major within a
    slice; the last slice is padded with the features' minimum."""
    T, n_mels = features.shape
    n = -(-T // frames)
    padded = features.new_full((n * frames, n_mels), float(features.min()) if T else 0.0)
    padded[:T] = features
    return padded.reshape(n, frames * n_mels)


def _mono(array: Any, what: str) -> torch.Tensor:
    """A float32 (T,) waveform from an array-like; a (T, C) or (C, T) array is averaged to mono."""
    try:
        x = torch.as_tensor(np.asarray(array, dtype=np.float32))
    except (TypeError, ValueError) as err:
        raise UserError(f"mel tokenizer: {what} is not numeric audio: {err}") from None
    if x.dim() == 2:
        x = x.mean(dim=1) if x.shape[0] > x.shape[1] else x.mean(dim=0)
    if x.dim() != 1 or x.numel() == 0:
        raise UserError(f"mel tokenizer: {what} must be a non-empty 1-D (or 2-D multichannel) array, "
                        f"got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise UserError(f"mel tokenizer: {what} holds NaN or infinite samples")
    return x


@contextmanager
def _quiet_c_stderr() -> Iterator[None]:
    """Silence file descriptor 2 while decoding: libsndfile's MP3 decoder (libmpg123) prints
    warnings about broken files straight to it, around our own one-line error."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (pytest capture, notebooks)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
