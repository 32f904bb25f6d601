"""load_audio: round trips through soundfile, and one-line UserErrors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from seqmodel_tokenizers.audio import load_audio

from seqmodel.errors import UserError


def _tone(n: int = 8000, rate: int = 16000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n) / rate)).astype(np.float32)


@pytest.mark.parametrize(
    ("suffix", "subtype", "atol"), [(".wav", "PCM_16", 1 / 32768), (".wav", "FLOAT", 0.0), (".flac", "PCM_24", 1e-6)]
)
def test_round_trip(tmp_path: Path, suffix: str, subtype: str, atol: float) -> None:
    path = tmp_path / f"tone{suffix}"
    sf.write(path, _tone(), 16000, subtype=subtype)
    wave, rate = load_audio(path)
    assert rate == 16000
    assert wave.dtype == torch.float32 and wave.shape == (8000,)
    np.testing.assert_allclose(wave.numpy(), _tone(), rtol=0, atol=atol)


def test_ogg_loads(tmp_path: Path) -> None:
    path = tmp_path / "tone.ogg"
    sf.write(path, _tone(22050, 22050), 22050, format="OGG", subtype="VORBIS")
    wave, rate = load_audio(str(path))
    assert rate == 22050 and abs(wave.shape[0] - 22050) < 2048
    assert 0.3 < float(wave.abs().max()) <= 1.0


def test_multichannel_is_averaged_and_range_clamped(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    left, right = _tone(), np.full(8000, 0.25, dtype=np.float32)
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    wave, rate = load_audio(path)
    assert rate == 8000
    np.testing.assert_allclose(wave.numpy(), (left + right) / 2, atol=1e-7)
    loud = tmp_path / "loud.wav"
    sf.write(loud, np.array([2.0, -3.0, 0.5], dtype=np.float32), 8000, subtype="FLOAT")
    assert load_audio(loud)[0].tolist() == [1.0, -1.0, 0.5]


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    files = {
        "corrupt": tmp_path / "noise.wav",
        "empty": tmp_path / "empty.wav",
        "text": tmp_path / "notes.txt",
        "unknown": tmp_path / "blob.xyz",
        "no samples": tmp_path / "silent.wav",
        "missing": tmp_path / "missing.wav",
        "directory": tmp_path / "folder.wav",
        "not finite": tmp_path / "nan.wav",
    }
    files["corrupt"].write_bytes(rng.bytes(4096))
    files["empty"].write_bytes(b"")
    files["text"].write_text("hello\nworld\n")
    files["unknown"].write_bytes(rng.bytes(512))
    sf.write(files["no samples"], np.zeros(0, dtype=np.float32), 16000)
    files["directory"].mkdir()
    sf.write(files["not finite"], np.array([0.0, np.nan], dtype=np.float32), 16000, subtype="FLOAT")
    return files


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("corrupt", "cannot decode"),
        ("empty", "empty"),
        ("text", "unsupported audio format '.txt'"),
        ("unknown", "unsupported audio format '.xyz'"),
        ("no samples", "no samples"),
        ("missing", "does not exist"),
        ("directory", "directory"),
        ("not finite", "NaN"),
    ],
)
def test_bad_input_raises_one_line_user_error(tmp_path: Path, case: str, expected: str) -> None:
    path = _bad_files(tmp_path)[case]
    with pytest.raises(UserError) as info:
        load_audio(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert expected in message
    assert "expected" in message
