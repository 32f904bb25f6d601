"""Spoken digit synthesis with espeak-ng: texts, audio, determinism, caching, voice-disjoint splits."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from seqmodel_plugins import spoken_digits_data as sd
from seqmodel_tokenizers.audio import load_audio

from seqmodel.errors import UserError

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)
N = 12


@pytest.fixture(scope="module")
def synthesised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    cache = tmp_path_factory.mktemp("cache")
    return cache, sd.synthesize(cache, N, seed=7, progress=False)


@needs_espeak
def test_texts_and_audio(synthesised: tuple[Path, list[dict]]) -> None:
    _, records = synthesised
    assert len(records) == N
    for record in records:
        assert set(record) == {"audio", "text", "voice"}
        assert record["text"].isdigit() and 1 <= len(record["text"]) <= 6
        assert record["voice"] in sd.VOICES
        wave, rate = load_audio(record["audio"])
        assert rate == 16000
        assert 0.2 * 16000 < wave.shape[0] < 8 * 16000
        assert 0.01 < float(wave.abs().max()) <= 1.0
    assert len({r["voice"] for r in records}) > 1


@needs_espeak
def test_manifest_is_relative_and_complete(synthesised: tuple[Path, list[dict]]) -> None:
    cache, records = synthesised
    (folder,) = cache.iterdir()
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    manifest = [json.loads(line) for line in lines]
    assert [folder / m["audio"] for m in manifest] == [Path(r["audio"]) for r in records]
    assert all(not Path(m["audio"]).is_absolute() for m in manifest)
    assert not list(folder.glob(".*.tmp"))


@needs_espeak
def test_same_seed_same_bytes_other_seed_other_texts(synthesised: tuple[Path, list[dict]], tmp_path: Path) -> None:
    _, first = synthesised
    again = sd.synthesize(tmp_path / "a", N, seed=7, progress=False)
    assert [(r["text"], r["voice"]) for r in again] == [(r["text"], r["voice"]) for r in first]
    assert all(Path(a["audio"]).read_bytes() == Path(b["audio"]).read_bytes() for a, b in zip(first, again))
    other = sd.synthesize(tmp_path / "b", N, seed=8, progress=False)
    assert [r["text"] for r in other] != [r["text"] for r in first]


@needs_espeak
def test_noise_changes_audio_not_texts(synthesised: tuple[Path, list[dict]], tmp_path: Path) -> None:
    _, clean = synthesised
    noisy = sd.synthesize(tmp_path, N, seed=7, noise=0.1, progress=False)
    assert [r["text"] for r in noisy] == [r["text"] for r in clean]
    assert Path(noisy[0]["audio"]).parent != Path(clean[0]["audio"]).parent
    assert load_audio(noisy[0]["audio"])[0].shape == load_audio(clean[0]["audio"])[0].shape
    assert Path(noisy[0]["audio"]).read_bytes() != Path(clean[0]["audio"]).read_bytes()


@needs_espeak
def test_second_call_hits_cache(synthesised: tuple[Path, list[dict]], monkeypatch: pytest.MonkeyPatch) -> None:
    cache, records = synthesised

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("synthesised again instead of reading the cache")

    monkeypatch.setattr(sd, "_speak", fail)
    start = time.perf_counter()
    assert sd.synthesize(cache, N, seed=7, progress=False) == records
    assert time.perf_counter() - start < 1.0


@needs_espeak
def test_interrupted_run_is_not_complete_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    speak, calls = sd._speak, []

    def flaky(utt: object, noise: float, seed: int):
        calls.append(utt)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return speak(utt, noise, seed)

    monkeypatch.setattr(sd, "_speak", flaky)
    with pytest.raises(KeyboardInterrupt):
        sd.synthesize(tmp_path, 6, seed=1, progress=False)
    (folder,) = tmp_path.iterdir()
    assert not (folder / "manifest.jsonl").exists()
    assert 3 <= len(list((folder / "wav").glob("*.wav"))) < 6
    monkeypatch.setattr(sd, "_speak", speak)
    resumed = sd.synthesize(tmp_path, 6, seed=1, progress=False)
    fresh = sd.synthesize(tmp_path / "fresh", 6, seed=1, progress=False)
    assert all(Path(a["audio"]).read_bytes() == Path(b["audio"]).read_bytes() for a, b in zip(resumed, fresh))


@needs_espeak
def test_split_of_synthesised_records(synthesised: tuple[Path, list[dict]]) -> None:
    _, records = synthesised
    splits = sd.split_by_voice(records, seed=0)
    voices = {name: {r["voice"] for r in split} for name, split in splits.items()}
    assert all(voices.values())
    assert not (voices["train"] & voices["val"] or voices["train"] & voices["test"] or voices["val"] & voices["test"])
    assert sum(len(s) for s in splits.values()) == len(records)


def _records(n: int = 600) -> list[dict]:
    return [{"audio": f"{i}.wav", "text": str(i % 10), "voice": sd.VOICES[(i * 7) % 100]} for i in range(n)]


def test_split_by_voice_is_disjoint_deterministic_and_sized() -> None:
    records = _records()
    splits = sd.split_by_voice(records, seed=3)
    assert splits == sd.split_by_voice(records, seed=3)
    assert splits != sd.split_by_voice(records, seed=4)
    voices = {name: {r["voice"] for r in split} for name, split in splits.items()}
    assert (len(voices["train"]), len(voices["val"]), len(voices["test"])) == (70, 15, 15)
    assert not (voices["train"] & voices["test"] or voices["train"] & voices["val"] or voices["val"] & voices["test"])
    assert sorted(r["audio"] for s in splits.values() for r in s) == sorted(r["audio"] for r in records)
    assert [r["audio"] for r in splits["test"]] == [r["audio"] for r in records if r["voice"] in voices["test"]]


def test_split_by_voice_rejects_bad_fractions_and_too_few_voices() -> None:
    with pytest.raises(UserError, match="val_fraction"):
        sd.split_by_voice(_records(), seed=0, val_fraction=0.6, test_fraction=0.4)
    with pytest.raises(UserError, match="too few"):
        sd.split_by_voice(_records(2), seed=0)
    assert sd.split_by_voice(_records(), seed=0, val_fraction=0.0, test_fraction=0.0)["train"] == _records()


def test_missing_espeak_is_a_clear_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sd.shutil, "which", lambda name: None)
    with pytest.raises(UserError) as info:
        sd.synthesize(tmp_path, 3, seed=0, progress=False)
    assert str(info.value) == (
        "espeak-ng not found: install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng`"
    )


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="n_utterances"):
        sd.synthesize(tmp_path, 0, seed=0)
    with pytest.raises(UserError, match="noise"):
        sd.synthesize(tmp_path, 3, seed=0, noise=-1.0)


def test_voices_exist_and_are_many() -> None:
    assert len(set(sd.VOICES)) == len(sd.VOICES) >= 300
    assert len(sd.DIGIT_WORDS) == 10
