"""The mel tokenizer: features through the tokenizer against the numpy reference, slicing round
trips, input forms (paths, waveforms at other rates, datasets Audio values), SpecAugment and
one-line errors for bad audio files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from seqmodel_tokenizers.mel import MelTokenizer, MelTokenizerConfig, slice_frames
from seqmodel_tokenizers.mel_features import MelConfig
from test_mel_features import _reference_log_mel, _signals

from seqmodel.config import build
from seqmodel.errors import UserError


def _tok(**kw) -> MelTokenizer:
    return MelTokenizer(MelTokenizerConfig(**kw), "audio")


@pytest.mark.parametrize("frames", [1, 4, 7])
@pytest.mark.parametrize("name", ["noise", "chirp"])
def test_features_through_tokenizer_match_reference(tmp_path: Path, name: str, frames: int) -> None:
    x = _signals()[name].astype(np.float32)
    path = tmp_path / "x.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    tok = _tok(frames=frames)
    seg = tok.encode(str(path))
    want = _reference_log_mel(x, MelConfig())  # (T, 80)
    T = want.shape[0]
    assert seg.values.shape == (-(-T // frames), frames * 80)
    assert torch.equal(seg.positions, torch.arange(len(seg)))
    got = tok.decode(seg).numpy()
    np.testing.assert_allclose(got[:T], want, rtol=0, atol=1e-4)
    assert np.allclose(got[T:], want.min(), atol=1e-4)  # the last slice's padding is the floor


def test_slices_are_consecutive_frames() -> None:
    feats = torch.arange(10 * 3, dtype=torch.float32).reshape(10, 3)
    s = slice_frames(feats, 4)
    assert s.shape == (3, 12)
    assert torch.equal(s[1], feats[4:8].flatten())
    assert torch.equal(s[2, :6], feats[8:10].flatten()) and bool((s[2, 6:] == 0).all())


def test_decode_puts_slices_back_in_position_order() -> None:
    tok = _tok(frames=2)
    seg = tok.encode(_signals()["chirp"].astype(np.float32))
    perm = torch.randperm(len(seg), generator=torch.Generator().manual_seed(0))
    shuffled = type(seg)("audio", values=seg.values[perm], positions=seg.positions[perm])
    assert torch.equal(tok.decode(shuffled), tok.decode(seg))


def test_input_forms_agree(tmp_path: Path) -> None:
    """A file, a (wave, rate) pair, a datasets Audio dict and a decoder object give the same
    tokens; a bare array is taken at the configured rate."""
    x = _signals()["chirp"][::2].astype(np.float32)  # 8 kHz
    path = tmp_path / "x8k.wav"
    sf.write(path, x, 8000, subtype="FLOAT")

    class Samples:
        data, sample_rate = torch.from_numpy(x)[None], 8000

    class Decoder:  # what datasets >= 4 returns for an Audio column (torchcodec)
        def get_all_samples(self):
            return Samples()

    tok = _tok()
    ref = tok.encode(str(path)).values
    assert ref.shape[0] == -(-(1 + 2 * x.size // 160) // 4)
    for value in ((x, 8000), {"array": x, "sampling_rate": 8000, "path": None}, {"path": str(path)}, Decoder()):
        assert torch.allclose(tok.encode(value).values, ref, atol=1e-5), type(value)
    assert tok.encode(x).values.shape[0] == -(-(1 + x.size // 160) // 4)


def test_resampled_tone_peaks_in_the_same_band() -> None:
    t8, t16 = np.arange(8000) / 8000, np.arange(16000) / 16000
    tok = _tok(frames=1)
    low = tok.decode(tok.encode((0.5 * np.sin(2 * np.pi * 440 * t8), 8000)))
    high = tok.decode(tok.encode((0.5 * np.sin(2 * np.pi * 440 * t16), 16000)))
    assert low.shape == high.shape
    assert int(low[20:-20].mean(0).argmax()) == int(high[20:-20].mean(0).argmax())


def test_spec_augment_only_in_training_and_reproducible() -> None:
    x = _signals()["noise"].astype(np.float32)
    plain, aug = _tok(), _tok(augment=True)
    clean = plain.encode(x).values
    assert torch.equal(aug.encode(x).values, clean)
    assert torch.equal(plain.encode(x, train=True, generator=torch.Generator().manual_seed(1)).values, clean)
    a = aug.encode(x, train=True, generator=torch.Generator().manual_seed(1)).values
    b = aug.encode(x, train=True, generator=torch.Generator().manual_seed(1)).values
    c = aug.encode(x, train=True, generator=torch.Generator().manual_seed(2)).values
    assert torch.equal(a, b) and not torch.equal(a, clean) and not torch.equal(a, c)


def test_spec_and_state_round_trip(tmp_path: Path) -> None:
    tok = _tok(frames=3, n_mels=40)
    spec = tok.spec()
    assert (spec.width, spec.position, spec.discrete) == (120, "learned", False)
    tok.save(tmp_path)
    _tok(frames=3, n_mels=40).load(tmp_path)
    with pytest.raises(UserError, match="differs"):
        _tok(frames=4, n_mels=40).load(tmp_path)


def test_state_from_an_older_front_end_is_refused(tmp_path: Path) -> None:
    """A run saved before the log-mel features changed (no version: 1) is not continued with
    features computed differently; the state (hence the run's data fingerprint) names the version."""
    tok = _tok()
    tok.save(tmp_path)
    state = json.loads((tmp_path / "mel.json").read_text())
    assert state["log_mel_version"] == 2
    del state["log_mel_version"]
    (tmp_path / "mel.json").write_text(json.dumps(state))
    with pytest.raises(UserError) as err:
        _tok().load(tmp_path)
    assert "front end version 1" in str(err.value) and "version 2" in str(err.value) and "\n" not in str(err.value)


def _bad_files(tmp: Path) -> dict[str, Path]:
    corrupt = tmp / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    empty = tmp / "empty.wav"
    empty.write_bytes(b"")
    mp3 = tmp / "song.mp3"
    mp3.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(200))
    short = tmp / "short.wav"
    sf.write(short, np.zeros(100, np.float32), 16000)
    return {"corrupt": corrupt, "empty": empty, "unsupported": mp3, "short": short, "missing": tmp / "nope.wav"}


@pytest.mark.parametrize("kind", ["corrupt", "empty", "unsupported", "short", "missing"])
def test_bad_audio_is_a_one_line_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(UserError) as err:
        _tok().encode(str(path))
    message = str(err.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize("value", [{"sampling_rate": 16000}, np.zeros((2, 3, 4)), np.array([np.nan] * 1000), 3.5])
def test_bad_values_are_user_errors(value) -> None:
    with pytest.raises(UserError, match="mel tokenizer"):
        _tok().encode(value)


@pytest.mark.parametrize(("table", "key"), [({"frames": 0}, "frames"), ({"position": "2d"}, "position"),
                                            ({"n_mels": 500}, "n_mels"), ({"n_masks": -1}, "n_masks")])
def test_config_problems_name_the_key(table: dict, key: str) -> None:
    with pytest.raises(UserError, match=f"{key}"):
        build(MelTokenizerConfig, table, "r.toml: [tokenizers.audio]")
