"""Audio file loading for the speech tokenizers: any WAV, FLAC or OGG file to a mono waveform.

Decoding is libsndfile's (through `soundfile`), which recognises a file by its header, not its
name. Every failure a user can cause (missing, empty, corrupt or unsupported file) is a one-line
`UserError` that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from seqmodel.errors import UserError

SUPPORTED_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")


def load_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read an audio file as a mono float32 waveform.

    Args:
        path: a WAV, FLAC or OGG (Vorbis) file. Multichannel audio is averaged to mono.

    Returns:
        The waveform, shape (T,) float32 with values in [-1, 1], and its sample rate in Hz.

    Raises:
        UserError: the file is missing, empty, corrupt, in an unsupported format, holds no
            samples or holds non-finite samples.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"{path}: {what}; expected a WAV, FLAC or OGG audio file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty (0 bytes); expected a WAV, FLAC or OGG audio file")
    try:
        data, sample_rate = sf.read(path, dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        reason = " ".join(str(err).split())
        if reason.startswith("Error opening"):
            reason = reason.rsplit("': ", 1)[-1]  # libsndfile repeats the path; keep the cause
        if path.suffix.lower() in SUPPORTED_SUFFIXES:
            raise UserError(f"{path}: cannot decode audio ({reason}); expected a valid WAV, FLAC or OGG file") from None
        raise UserError(
            f"{path}: unsupported audio format {path.suffix or '(no suffix)'!r}; "
            f"expected a WAV, FLAC or OGG file ({reason})"
        ) from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: audio file holds no samples; expected a non-empty recording")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise UserError(f"{path}: audio holds NaN or infinite samples; expected finite values")
    waveform = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)).clamp_(-1.0, 1.0)
    return waveform, int(sample_rate)
