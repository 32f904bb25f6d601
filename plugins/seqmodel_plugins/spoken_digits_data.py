"""Spoken digit strings synthesised offline with espeak-ng: the speech recipe's embedded data.

Each utterance speaks 1-6 random digits as words ("three one four") and its text target is the
digit string ("314"). Utterances vary in voice (8 English accents x 40 espeak-ng variants), speed
(120-200 words per minute) and pitch (30-70), and can carry white background noise. Everything is
drawn from one seed, so the same arguments give byte-identical files.

Synthesis is cached: one directory per (version, seed, n, noise) under the cache directory,
holding 16 kHz 16-bit PCM WAV files and a ``manifest.jsonl`` written last and atomically, so an
interrupted run never looks complete (a rerun keeps the finished WAV files and does the rest).
`split_by_voice` holds out whole voices, so validation and test measure generalisation to
speakers the model never heard.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from seqmodel.errors import UserError

VERSION = 1  # bump when anything below changes what gets synthesised
SAMPLE_RATE = 16000
ACCENTS = ("en", "en-us", "en-us-nyc", "en-029", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
# fmt: off
VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "croak", "grandma", "grandpa",
    "steph", "linda", "belinda", "Annie", "Andrea", "Alicia", "anika", "robert", "david", "john",
    "max", "paul", "zac", "Storm", "edward", "quincy", "Alex",
)
# fmt: on
VOICES = tuple(accent + (f"+{variant}" if variant else "") for accent in ACCENTS for variant in VARIANTS)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_DIGITS = 6
SPEEDS = (120, 200)  # words per minute, inclusive
PITCHES = (30, 70)  # espeak-ng pitch, 0-99, inclusive
ESPEAK_MISSING = (
    "espeak-ng not found: install it with `apt-get install espeak-ng` (Debian/Ubuntu) "
    "or `brew install espeak-ng`"
)


@dataclass(frozen=True)
class _Utterance:
    """Everything that determines one synthesised file."""

    index: int
    text: str
    voice: str
    speed: int
    pitch: int


def _plan(n_utterances: int, seed: int) -> list[_Utterance]:
    rng = np.random.default_rng(seed)
    plan = []
    for index in range(n_utterances):
        digits = rng.integers(0, 10, size=int(rng.integers(1, MAX_DIGITS + 1)))
        voice = VOICES[int(rng.integers(len(VOICES)))]
        speed = int(rng.integers(SPEEDS[0], SPEEDS[1] + 1))
        pitch = int(rng.integers(PITCHES[0], PITCHES[1] + 1))
        plan.append(_Utterance(index, "".join(map(str, digits)), voice, speed, pitch))
    return plan


def _speak(utt: _Utterance, noise: float, seed: int) -> np.ndarray:
    """(T,) float32 waveform at SAMPLE_RATE."""
    words = " ".join(DIGIT_WORDS[int(d)] for d in utt.text)
    cmd = ["espeak-ng", "-v", utt.voice, "-s", str(utt.speed), "-p", str(utt.pitch), "--stdout", words]
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout:
        reason = " ".join(done.stderr.decode(errors="replace").split()) or f"exit code {done.returncode}"
        raise UserError(f"espeak-ng failed for voice {utt.voice!r}: {reason}")
    data, rate = sf.read(io.BytesIO(done.stdout), dtype="float32", always_2d=True)  # (T, C)
    wave = data.mean(axis=1)  # (T,)
    if rate != SAMPLE_RATE:
        # scipy, not torchaudio: torch's intra-op threads fight the worker threads (5-20x slower
        # here on 2 cores), and scipy already comes with scikit-learn.
        step = math.gcd(rate, SAMPLE_RATE)
        wave = resample_poly(wave, SAMPLE_RATE // step, rate // step).astype(np.float32)
    if noise > 0:
        rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) or 1e-3
        rng = np.random.default_rng([seed, utt.index])
        wave = wave + (noise * rms) * rng.standard_normal(wave.shape[0]).astype(np.float32)
    return np.clip(wave, -1.0, 1.0)


def _write_wav(path: Path, wave: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def _read_manifest(manifest: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{manifest}: unreadable manifest ({err}); delete its directory to resynthesise") from None


def synthesize(cache_dir: Path, n_utterances: int, seed: int, noise: float = 0.0, progress: bool = True) -> list[dict]:
    """Synthesise (or load from the cache) spoken digit-string utterances.

    Args:
        cache_dir: folder that holds one subdirectory per (version, seed, n, noise).
        n_utterances: how many utterances to make.
        seed: fixes texts, voices, speeds, pitches and noise; same seed, same bytes.
        noise: white-noise RMS as a fraction of the utterance's speech RMS (0 = clean; 0.1 is an
            SNR of about 20 dB).
        progress: show a progress bar on stderr while synthesising.

    Returns:
        One record per utterance, in order: ``audio`` (absolute path of the WAV file, str),
        ``text`` (the digit string) and ``voice`` (espeak-ng voice and variant, e.g.
        ``"en-us+f3"``). The manifest stores ``audio`` relative to its directory.

    Raises:
        UserError: espeak-ng is missing or fails, an argument is out of range, or a cached
            manifest is unreadable.
    """
    if n_utterances < 1:
        raise UserError(f"spoken digits: n_utterances must be at least 1, got {n_utterances}")
    if not noise >= 0:
        raise UserError(f"spoken digits: noise must be >= 0, got {noise}")
    out = Path(cache_dir) / f"spoken_digits_v{VERSION}_seed{seed}_n{n_utterances}_noise{noise:g}"
    manifest = out / "manifest.jsonl"
    if manifest.is_file():
        return [{**r, "audio": str(out / r["audio"])} for r in _read_manifest(manifest)]
    if shutil.which("espeak-ng") is None:
        raise UserError(ESPEAK_MISSING)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    plan = _plan(n_utterances, seed)
    relative = [f"wav/{u.index:05d}.wav" for u in plan]
    todo = [u for u, rel in zip(plan, relative) if not (out / rel).is_file()]

    def make(utt: _Utterance) -> None:
        _write_wav(out / relative[utt.index], _speak(utt, noise, seed))

    workers = min(4, os.cpu_count() or 1)
    bar = tqdm(total=n_utterances, initial=n_utterances - len(todo), desc="spoken digits", unit="utt",
               file=sys.stderr, disable=not progress)
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for _ in pool.map(make, todo):
                bar.update()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # otherwise every queued utterance still runs
            raise
    records = [{"audio": rel, "text": u.text, "voice": u.voice} for u, rel in zip(plan, relative)]
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, manifest)
    return [{**r, "audio": str(out / r["audio"])} for r in records]


def split_by_voice(
    records: list[dict], seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, list[dict]]:
    """Split records into train/val/test so that no voice appears in two splits.

    Whole voices (the ``voice`` field, accent and variant) are shuffled with `seed` and dealt out:
    about `test_fraction` of the voices to test, `val_fraction` to val, the rest to train. A
    non-zero fraction always gets at least one voice. Records keep their order within a split.

    Args:
        records: utterance records with a ``voice`` key, as `synthesize` returns.
        seed: fixes which voices go where.
        val_fraction: share of voices held out for validation.
        test_fraction: share of voices held out for testing.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        UserError: the fractions are negative or leave no voice for training.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise UserError(
            f"spoken digits: val_fraction and test_fraction must be >= 0 with a sum below 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    voices = sorted({r["voice"] for r in records})
    random.Random(seed).shuffle(voices)
    n_test = max(1 if test_fraction > 0 else 0, round(len(voices) * test_fraction))
    n_val = max(1 if val_fraction > 0 else 0, round(len(voices) * val_fraction))
    if n_test + n_val >= len(voices):
        raise UserError(
            f"spoken digits: {len(voices)} distinct voices are too few to hold out "
            f"{n_val} for val and {n_test} for test and keep one for train; synthesise more utterances"
        )
    split_of = {v: "test" for v in voices[:n_test]}
    split_of.update({v: "val" for v in voices[n_test : n_test + n_val]})
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for record in records:
        splits[split_of.get(record["voice"], "train")].append(record)
    return splits
