"""log_mel against an independent float64 numpy reference; spec_augment's determinism and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqmodel_tokenizers.mel_features import MelConfig, log_mel, spec_augment


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3.0 / 200.0
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * 200.0 / 3.0
    logarithmic = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, logarithmic, linear)


def _slaney_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular filters, area-normalised (Slaney)."""
    bin_hz = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    bank = np.zeros((bin_hz.size, n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (bin_hz - lo) / (mid - lo)
        falling = (hi - bin_hz) / (hi - mid)
        bank[:, m] = np.maximum(0.0, np.minimum(rising, falling)) * 2.0 / (hi - lo)
    return bank


def _reference_log_mel(x: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """Whisper's features in float64 with numpy only: (frames, n_mels)."""
    n_fft, hop = cfg.n_fft, cfg.hop_length
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    n_frames = 1 + (padded.size - n_fft) // hop
    frames = np.stack([padded[i * hop : i * hop + n_fft] for i in range(n_frames)])  # (frames, n_fft)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (frames, n_fft // 2 + 1)
    mel = power @ _slaney_filterbank(cfg.sample_rate, n_fft, cfg.n_mels)  # (frames, n_mels)
    logspec = np.log10(np.maximum(mel, 1e-10))
    logspec = np.maximum(logspec, logspec.max() - 8.0)
    return (logspec + 4.0) / 4.0


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(12_345) / 16000
    return {
        "noise": rng.uniform(-0.5, 0.5, 12_345),
        "sine": 0.8 * np.sin(2 * np.pi * 440.0 * t),
        "chirp": 0.3 * np.sin(2 * np.pi * (200.0 + 1500.0 * t) * t) + 0.01 * rng.standard_normal(t.size),
    }


@pytest.mark.parametrize("name", ["noise", "sine", "chirp"])
def test_log_mel_matches_numpy_reference(name: str) -> None:
    cfg = MelConfig()
    x = _signals()[name]
    got = log_mel(torch.from_numpy(x).float(), 16000, cfg)
    want = _reference_log_mel(x.astype(np.float32), cfg)
    assert got.dtype == torch.float32
    assert got.shape == want.shape == (1 + x.size // cfg.hop_length, cfg.n_mels)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-4)


def test_log_mel_other_config_matches_reference() -> None:
    cfg = MelConfig(sample_rate=8000, n_fft=256, hop_length=80, n_mels=40)
    x = _signals()["noise"][:4000]
    got = log_mel(torch.from_numpy(x).float(), 8000, cfg)
    np.testing.assert_allclose(got.numpy(), _reference_log_mel(x.astype(np.float32), cfg), rtol=0, atol=1e-4)


def test_log_mel_resamples_to_config_rate() -> None:
    cfg = MelConfig()
    t = np.arange(8000) / 8000  # one second at 8 kHz
    x = torch.from_numpy(0.5 * np.sin(2 * np.pi * 1000.0 * t)).float()
    got = log_mel(x, 8000, cfg)
    assert got.shape == (1 + 16000 // cfg.hop_length, cfg.n_mels)
    peak_band = int(got[5:-5].mean(dim=0).argmax())
    band_centres = _mel_to_hz(np.linspace(0.0, _hz_to_mel(8000.0), cfg.n_mels + 2))[1:-1]
    assert abs(band_centres[peak_band] - 1000.0) < 100.0


def test_log_mel_range_and_transform_cache() -> None:
    cfg = MelConfig()
    x = torch.from_numpy(_signals()["noise"]).float()
    first = log_mel(x, 16000, cfg)
    assert torch.equal(first, log_mel(x, 16000, MelConfig()))
    assert float(first.max() - first.min()) <= 2.0 + 1e-6  # 8 decades / 4
    assert torch.isfinite(first).all()


def test_log_mel_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="mono"):
        log_mel(torch.zeros(2, 1000), 16000, MelConfig())
    with pytest.raises(ValueError, match="n_fft"):
        log_mel(torch.zeros(100), 16000, MelConfig())


def _features() -> torch.Tensor:
    return log_mel(torch.from_numpy(_signals()["chirp"]).float(), 16000, MelConfig())


def test_spec_augment_is_deterministic_per_generator() -> None:
    feats = _features()
    a = spec_augment(feats, torch.Generator().manual_seed(1), freq_mask=20, time_mask=30)
    b = spec_augment(feats, torch.Generator().manual_seed(1), freq_mask=20, time_mask=30)
    c = spec_augment(feats, torch.Generator().manual_seed(2), freq_mask=20, time_mask=30)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_spec_augment_does_not_use_global_rng() -> None:
    feats = _features()
    torch.manual_seed(0)
    a = spec_augment(feats, torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    b = spec_augment(feats, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("seed", range(20))
def test_spec_augment_masks_whole_bands_with_the_mean(seed: int) -> None:
    feats = _features()
    original = feats.clone()
    out = spec_augment(feats, torch.Generator().manual_seed(seed), freq_mask=15, time_mask=20, n_masks=2)
    assert torch.equal(feats, original)
    assert out.shape == feats.shape and out.dtype == feats.dtype
    changed = out != feats
    assert torch.allclose(out[changed], feats.mean().expand(int(changed.sum())))
    fill = out == feats.mean()
    time_rows = fill.all(dim=1)  # (frames,)
    freq_cols = fill.all(dim=0)  # (n_mels,)
    assert torch.equal(changed, (time_rows[:, None] | freq_cols[None, :]) & (feats != feats.mean()))
    assert int(time_rows.sum()) <= 2 * 20 and int(freq_cols.sum()) <= 2 * 15


def test_spec_augment_zero_width_is_identity() -> None:
    feats = _features()
    out = spec_augment(feats, torch.Generator().manual_seed(0), freq_mask=0, time_mask=0)
    assert torch.equal(out, feats)
