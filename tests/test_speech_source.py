"""The spoken_digits source: fields, voice-disjoint deterministic splits, cache, config errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from seqmodel_plugins.sources.speech import SpokenDigitsConfig, SpokenDigitsSource

from seqmodel.config import build
from seqmodel.errors import UserError

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _source(cache: Path, **kw) -> SpokenDigitsSource:
    return SpokenDigitsSource(SpokenDigitsConfig(n_utterances=40, seed=3, cache_dir=str(cache), progress=False, **kw))


def test_splits_hold_out_whole_voices(tmp_path: Path) -> None:
    src = _source(tmp_path)
    splits = {name: src.split(name) for name in ("train", "val", "test")}
    assert sum(len(s) for s in splits.values()) == 40
    voices = {name: {r["voice"] for r in s} for name, s in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not voices[a] & voices[b]
    assert all(splits[name] for name in splits)
    for record in splits["train"]:
        assert set(src.fields) <= set(record) and Path(record["audio"]).is_file() and record["text"].isdigit()


def test_deterministic_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _source(tmp_path).split("test")
    monkeypatch.setattr(shutil, "which", lambda name: None)  # a second source must not synthesise
    again = _source(tmp_path)
    assert again.split("test") == first
    assert again.identity() == _source(tmp_path).identity()
    assert _source(tmp_path, test_fraction=0.3).identity() != again.identity()


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown split"):
        _source(tmp_path).split("dev")


@pytest.mark.parametrize(("table", "key"), [({"n_utterances": 0}, "n_utterances"), ({"noise": -1.0}, "noise"),
                                            ({"val_fraction": 0.6, "test_fraction": 0.5}, "test_fraction"),
                                            ({"test_fraction": 1.5}, "test_fraction")])
def test_config_problems_name_the_key(table: dict, key: str) -> None:
    with pytest.raises(UserError, match=key):
        build(SpokenDigitsConfig, table, "r.toml: [data]")
