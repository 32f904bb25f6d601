"""log_mel against Whisper's front end written out in float64 numpy (audio that ends mid-sound
included); spec_augment's determinism and masks."""

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
    """Whisper's features in float64 with numpy only, (T // hop, n_mels): the content frames of
    ``whisper.log_mel_spectrogram(x, padding=N_SAMPLES)`` as `whisper.transcribe` computes them."""
    n_fft, hop = cfg.n_fft, cfg.hop_length
    audio = np.concatenate([x.astype(np.float64), np.zeros(30 * cfg.sample_rate)])  # padding=N_SAMPLES: 30 s of zeros
    padded = np.pad(audio, n_fft // 2, mode="reflect")  # torch.stft(center=True)
    n_frames = 1 + (padded.size - n_fft) // hop
    frames = np.stack([padded[i * hop : i * hop + n_fft] for i in range(n_frames)])  # (frames, n_fft)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (frames, n_fft // 2 + 1)
    power = power[:-1]  # Whisper drops the last STFT frame: stft[..., :-1]
    mel = power @ _slaney_filterbank(cfg.sample_rate, n_fft, cfg.n_mels)  # (frames, n_mels)
    logspec = np.log10(np.maximum(mel, 1e-10))
    logspec = np.maximum(logspec, logspec.max() - 8.0)  # the floor over every frame, padding included
    content = x.size // hop  # transcribe: content_frames = mel.shape[-1] - N_FRAMES
    return (logspec[:content] + 4.0) / 4.0


def _signals() -> dict[str, np.ndarray]:
    """Sounds that all end mid-sound (the last samples are loud), 12,345 samples: 77 frames and
    a 25-sample remainder. "click" is silent but for its last 20 samples, which only frames after
    the 77 returned reach fully: its floor is set by a frame the features do not include."""
    rng = np.random.default_rng(0)
    t = np.arange(12_345) / 16000
    click = np.zeros(t.size)
    click[-20:] = 0.9
    return {
        "noise": rng.uniform(-0.5, 0.5, 12_345),
        "sine": 0.8 * np.sin(2 * np.pi * 440.0 * t),
        "chirp": 0.3 * np.sin(2 * np.pi * (200.0 + 1500.0 * t) * t) + 0.01 * rng.standard_normal(t.size),
        "crescendo": np.linspace(0.0, 1.0, t.size) * np.sin(2 * np.pi * 1234.0 * t),
        "click": click,
    }


@pytest.mark.parametrize("name", ["noise", "sine", "chirp", "crescendo", "click"])
def test_log_mel_matches_whisper_formula(name: str) -> None:
    cfg = MelConfig()
    x = _signals()[name]
    got = log_mel(torch.from_numpy(x).float(), 16000, cfg)
    want = _reference_log_mel(x.astype(np.float32), cfg)
    assert got.dtype == torch.float32
    assert got.shape == want.shape == (x.size // cfg.hop_length, cfg.n_mels) == (77, 80)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n", [160, 161, 199, 201, 359, 400, 1000])
def test_log_mel_of_short_sounds_matches_whisper_formula(n: int) -> None:
    """Fewer samples than the reflect padding at the start needs: Whisper reflects into its zeros."""
    x = np.sin(np.arange(n) / 3.0).astype(np.float32)
    got = log_mel(torch.from_numpy(x), 16000, MelConfig())
    np.testing.assert_allclose(got.numpy(), _reference_log_mel(x, MelConfig()), rtol=0, atol=1e-4)


def test_the_floor_comes_from_frames_past_the_returned_ones() -> None:
    x = _signals()["click"]
    got = log_mel(torch.from_numpy(x).float(), 16000, MelConfig())
    floor = float(got.min())
    assert np.isclose(got.numpy(), floor).mean() > 0.5  # most bins sit on the floor ...
    assert float(got.max()) < floor + 2.0 - 0.1  # ... set 8 decades below a peak the returned frames lack


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
    assert got.shape == (16000 // cfg.hop_length, cfg.n_mels)
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
    with pytest.raises(ValueError, match="at least hop_length = 160 samples"):
        log_mel(torch.zeros(159), 16000, MelConfig())


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
