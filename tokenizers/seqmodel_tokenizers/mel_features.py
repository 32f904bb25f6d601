"""Whisper-style log-mel features and SpecAugment masking for the speech tokenizers.

`log_mel` is Whisper's front end (Radford et al. 2022, "Robust Speech Recognition via
Large-Scale Weak Supervision"; openai/whisper `audio.py`), exactly as Whisper applies it to a
recording: silence (zeros) after the sound, a 25 ms periodic Hann window every 10 ms at 16 kHz
(centred frames, reflect padding at the start), power spectrum, Slaney-scale, Slaney-normalised
mel filterbank, log10 clamped to 8 decades below the loudest bin of any frame the sound reaches,
rescaled to roughly [-1, 1]; a waveform of T samples gives Whisper's ``T // hop_length`` frames.
With Whisper's settings (the defaults here) the result is
``whisper.log_mel_spectrogram(x, padding=N)[:, : T // 160].T`` for any N >= 360 samples: the
frames `whisper.transcribe` (N = 30 s) treats as content. Measured against openai-whisper
20250625 it agrees to 3e-5 (float32 rounding: torchaudio's filterbank against Whisper's stored
librosa one, and the order of the sums). Whisper reads 16 kHz input only; other rates are
resampled here first (torchaudio's sinc resampler). `VERSION` names this definition in the mel
tokenizer's saved state (version 1 reflect-padded the end, kept one more frame and took the
floor over it too: up to 0.22 off Whisper on the last frames of a sound cut off mid-note).

`spec_augment` is SpecAugment's frequency and time masking (Park et al. 2019, "SpecAugment: A
Simple Data Augmentation Method for Automatic Speech Recognition"), with mask positions drawn
from an explicit `torch.Generator` so augmentation is reproducible. torchaudio's
`FrequencyMasking`/`TimeMasking` draw from the global RNG, hence the small reimplementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor

VERSION = 2  # bump whenever log_mel's output changes: saved runs record it


@dataclass(frozen=True)
class MelConfig:
    """Log-mel front end settings; the defaults are Whisper's."""

    sample_rate: int = 16000
    """Rate (Hz) waveforms are resampled to before the STFT."""
    n_fft: int = 400
    """STFT size and Hann window length in samples (25 ms at 16 kHz)."""
    hop_length: int = 160
    """Samples between successive frames (10 ms at 16 kHz)."""
    n_mels: int = 80
    """Number of mel bands: the feature width F."""


@lru_cache(maxsize=16)
def _mel_transform(cfg: MelConfig, device: torch.device) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        window_fn=torch.hann_window,
        power=2.0,
        center=True,
        pad_mode="reflect",
        norm="slaney",
        mel_scale="slaney",
    ).to(device)


def log_mel(waveform: Tensor, sample_rate: int, cfg: MelConfig) -> Tensor:
    """Whisper's log-mel spectrogram of a mono waveform (see the module docstring).

    Args:
        waveform: (T,) samples in [-1, 1].
        sample_rate: rate of `waveform` in Hz; resampled to `cfg.sample_rate` if different.
        cfg: the front end settings.

    Returns:
        (frames, n_mels) float32 features, ``frames = T' // hop_length`` where T' is the
        length after resampling.

    Raises:
        ValueError: `waveform` is not 1-D, or shorter than one hop (after resampling).
    """
    if waveform.dim() != 1:
        raise ValueError(f"log_mel expects a (T,) mono waveform, got shape {tuple(waveform.shape)}")
    waveform = waveform.float()
    if sample_rate != cfg.sample_rate:
        waveform = torchaudio.functional.resample(waveform, sample_rate, cfg.sample_rate)
    frames = waveform.shape[0] // cfg.hop_length
    if frames < 1:
        raise ValueError(f"log_mel needs at least hop_length = {cfg.hop_length} samples at {cfg.sample_rate} Hz, "
                         f"got {waveform.shape[0]}")
    # Silence after the sound, enough that every frame reaching the sound is computed and the
    # STFT's own reflect padding at the end reflects only zeros: Whisper's `padding` samples.
    padded = F.pad(waveform, (0, cfg.n_fft // 2 + cfg.hop_length))  # (T + n_fft // 2 + hop,)
    power = _mel_transform(cfg, waveform.device)(padded)  # (n_mels, frames + 3): the last ones silent
    logspec = power.clamp(min=1e-10).log10()
    logspec = torch.maximum(logspec, logspec.max() - 8.0)  # 80 dB below the loudest bin of any frame
    return ((logspec[:, :frames] + 4.0) / 4.0).T.contiguous()  # (frames, n_mels)


def _band_mask(size: int, max_width: int, n_masks: int, generator: torch.Generator) -> Tensor:
    """(size,) bool: the union of `n_masks` bands, each of width uniform in [0, max_width]."""
    max_width = min(max_width, size)
    u = torch.rand(n_masks, 2, generator=generator, device=generator.device)
    widths = (u[:, 0] * (max_width + 1)).long().clamp(max=max_width)  # (n_masks,)
    starts = (u[:, 1] * (size - widths + 1)).long().clamp(max=size - widths)  # (n_masks,)
    index = torch.arange(size, device=generator.device)  # (size,)
    inside = (index >= starts[:, None]) & (index < (starts + widths)[:, None])  # (n_masks, size)
    return inside.any(dim=0)


def spec_augment(
    features: Tensor,
    generator: torch.Generator,
    freq_mask: int = 15,
    time_mask: int = 20,
    n_masks: int = 2,
) -> Tensor:
    """SpecAugment frequency and time masking, reproducible from `generator`.

    Masked cells are set to the mean of `features`, the neutral value for these roughly centred
    log-mel features.

    Args:
        features: (frames, n_mels) features; not modified.
        generator: the source of randomness; the same generator state gives the same masks.
        freq_mask: largest width of a frequency mask, in mel bands (SpecAugment's F).
        time_mask: largest width of a time mask, in frames (SpecAugment's T).
        n_masks: number of frequency masks and, separately, of time masks (m_F = m_T).

    Returns:
        A masked copy of `features`, same shape and dtype.
    """
    if features.dim() != 2:
        raise ValueError(f"spec_augment expects (frames, n_mels) features, got shape {tuple(features.shape)}")
    frames, n_mels = features.shape
    time = _band_mask(frames, time_mask, n_masks, generator).to(features.device)  # (frames,)
    freq = _band_mask(n_mels, freq_mask, n_masks, generator).to(features.device)  # (n_mels,)
    masked = time[:, None] | freq[None, :]  # (frames, n_mels)
    return features.masked_fill(masked, features.mean())
