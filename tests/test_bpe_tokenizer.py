"""The bpe tokenizer: exact round trips (byte fallback included), exact chunked encoding,
persistence and its one-line errors, pretrained vocabularies, and end-of-text between documents."""

import json

import numpy as np
import pytest
import torch
from conftest import make_text
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from seqmodel_tokenizers.bpe import BPEConfig, BPETokenizer, byte_symbols, pieces

from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError
from seqmodel.recipe.schema import parse_recipe
from seqmodel.segments import Segment

VARIED = "naïve café 日本語のテキスト 🎉🙂 e\u0301 ñ\tTab\r\nCRLF    spaces\n\n" * 20
HARD = ["", "日本語", "🎉👍🏽", "e\u0301\u0308", "a\tb\t\t", "x\r\ny\r\n", "    ", "\n\n\n", "a  \n  b", " \u00a0\u3000",
        "<|endoftext|>", "\x00\x7f\ufffd", "\U0010ffff"]
settings_ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def fitted(text: str, **config) -> BPETokenizer:
    tok = BPETokenizer(BPEConfig(**config), "text")
    tok.fit([text])
    return tok


@pytest.fixture(scope="module")
def varied() -> BPETokenizer:
    return fitted(make_text(300) + VARIED, vocab_size=400)


@pytest.fixture(scope="module")
def ascii_only() -> BPETokenizer:
    """Trained on text with none of the characters the round-trip strings are made of."""
    return fitted(make_text(300), vocab_size=400)


def roundtrip(tok: BPETokenizer, text: str) -> None:
    ids = tok.encode(text).ids
    assert ids.dtype == torch.int64 and (ids.numel() == 0 or int(ids.max()) < tok.spec().vocab_size)
    assert tok.decode(Segment("text", ids=ids)) == text


@settings_
@given(st.text())
@example("".join(HARD))
def test_round_trip_is_exact(varied, ascii_only, text):
    roundtrip(varied, text)
    roundtrip(ascii_only, text)


@pytest.mark.parametrize("text", HARD)
def test_round_trip_hard_cases(varied, ascii_only, text):
    roundtrip(varied, text)
    roundtrip(ascii_only, text)


def test_byte_fallback_keeps_every_byte(ascii_only):
    assert ascii_only.tok.get_vocab().keys() >= byte_symbols().keys()
    assert "日" not in make_text(300)
    assert len(ascii_only.encode_ids("日")) == 3  # three UTF-8 bytes, none merged


@settings_
@given(st.text(alphabet=st.sampled_from("ab \n\t\r.日'\x0b\x0c\x1c\x85\xa0\u180e\u200b\u2028\u3000")), st.integers(1, 12))
def test_pieces_encode_exactly_like_the_whole_text(varied, text, size):
    parts = pieces(text, size)
    assert "".join(parts) == text
    whole = varied.tok.encode(text, add_special_tokens=False).ids
    assert [i for e in varied.tok.encode_batch(parts, add_special_tokens=False) for i in e.ids] == whole


def test_long_text_fast_path_matches_single_encode(varied):
    text = make_text(2000, seed=3) + VARIED
    assert len(pieces(text)) > 1
    fast = varied.encode_ids(text)
    assert fast.dtype == np.int64 and fast.tolist() == varied.tok.encode(text, add_special_tokens=False).ids


def test_vocabulary_size_specials_and_eot():
    tok = fitted(make_text(500), vocab_size=320, special_tokens=["<|pad|>", "<|sep x|>"], specials_in_text="special")
    assert tok.spec().vocab_size == 320 and tok.spec().discrete
    assert tok.eot_id == tok.tok.token_to_id("<|endoftext|>")
    ids = tok.encode_ids("a<|sep x|>b<|endoftext|>").tolist()
    assert tok.tok.token_to_id("<|sep x|>") in ids and ids[-1] == tok.eot_id
    assert tok.piece(tok.eot_id) == "<|endoftext|>"
    assert fitted(make_text(50), eot="").eot_id is None


def test_pieces_spell_the_text(varied):
    text = "To be, or not to be: that is the question.\n"
    assert "".join(varied.piece(i) for i in varied.encode_ids(text)) == text
    cut = [varied.piece(i) for i in varied.encode_ids("\U0001f600")]  # a character not merged in training
    assert all(p.startswith("<0x") for p in cut) or cut == ["\U0001f600"]


def test_training_is_deterministic():
    text = make_text(400, seed=1)
    assert fitted(text).tok.to_str() == fitted(text).tok.to_str()


def test_save_load_same_ids(varied, tmp_path):
    varied.save(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    again = BPETokenizer(BPEConfig(vocab_size=400), "text")
    again.load(tmp_path)
    assert again.encode_ids(VARIED).tolist() == varied.encode_ids(VARIED).tolist()
    assert again.eot_id == varied.eot_id and again.spec() == varied.spec()


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "folder"])
def test_bad_tokenizer_file_is_a_one_line_error(varied, tmp_path, damage):
    varied.save(tmp_path)
    path = tmp_path / "tokenizer.json"
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x00\xffnot json")
    elif damage == "truncated":
        path.write_text(path.read_text()[:200])
    else:
        path.unlink()
        path.mkdir()
    with pytest.raises(UserError) as err:
        BPETokenizer(BPEConfig(), "text").load(tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_pretrained_file_is_used_without_training(varied, tmp_path):
    varied.save(tmp_path)
    tok = BPETokenizer(BPEConfig(path=str(tmp_path / "tokenizer.json"), vocab_size=5000), "text")
    tok.fit(iter(["completely different text " * 100]))
    assert tok.tok.to_str() == varied.tok.to_str() and tok.spec().vocab_size == varied.spec().vocab_size


def test_pretrained_file_without_eot_gets_one(tmp_path):
    fitted(make_text(100), eot="").save(tmp_path)
    tok = BPETokenizer(BPEConfig(path=str(tmp_path / "tokenizer.json")), "text")
    tok.fit([])
    assert tok.eot_id == tok.spec().vocab_size - 1 and tok.decode_ids([tok.eot_id]) == "<|endoftext|>"
    with pytest.raises(UserError, match="nowhere.json: missing BPE tokenizer file"):
        BPETokenizer(BPEConfig(path=str(tmp_path / "nowhere.json")), "text").fit([])


def test_empty_training_split_is_a_user_error():
    with pytest.raises(UserError, match="no text"):
        BPETokenizer(BPEConfig(), "text").fit(["", ""])


def recipe(tmp_path, paths, **tokenizer) -> dict:
    return {"model": {"layers": 1, "d_model": 16, "heads": 2, "context": 16},
            "data": {"source": "text", "paths": [str(p) for p in paths]},
            "tokenizer": {"kind": "bpe", "vocab_size": 300, **tokenizer}, "task": {"kind": "lm"}}


@pytest.mark.parametrize("table,problem", [({"vocab_size": 100}, "vocab_size: must be at least 258"),
                                           ({"special_tokens": ["<|endoftext|>"]}, "special_tokens: must be distinct"),
                                           ({"vocab_size": "big"}, "vocab_size: expected an integer"),
                                           ({"position": "2d"}, "position: expected learned, rotary or none")])
def test_recipe_values_are_checked(tmp_path, table, problem):
    with pytest.raises(UserError, match=problem):
        parse_recipe(recipe(tmp_path, ["x.txt"], **table), "r.toml")


def test_lm_task_puts_eot_between_documents(tmp_path):
    docs = [make_text(120, seed=1), make_text(80, seed=2) + "日本語\n"]
    for k, doc in enumerate(docs):
        (tmp_path / f"doc{k}.txt").write_text(doc)
    pipe = Pipeline(parse_recipe(recipe(tmp_path, sorted(tmp_path.glob("doc*.txt"))), "r.toml"))
    pipe.fit()
    tok, train = pipe.tokenizers["text"], [ex["text"] for ex in pipe.examples("train")]
    assert len(train) == 2 and all(t and t in d for t, d in zip(train, docs))
    expected = [*tok.encode_ids(train[0]), tok.eot_id, *tok.encode_ids(train[1])]
    ids = pipe.task.ids("train").tolist()
    assert ids == expected and ids.count(tok.eot_id) == 1
    assert tok.decode_ids(ids) == "<|endoftext|>".join(train)


def test_saved_state_is_the_library_json(varied, tmp_path):
    varied.save(tmp_path)
    state = json.loads((tmp_path / "tokenizer.json").read_text())
    assert state["model"]["type"] == "BPE" and state["pre_tokenizer"]["type"] == "ByteLevel"


def test_eval_counts_document_characters_not_separators(tmp_path):
    for k in range(2):
        (tmp_path / f"doc{k}.txt").write_text(make_text(150, seed=k))
    pipe = Pipeline(parse_recipe(recipe(tmp_path, sorted(tmp_path.glob("doc*.txt"))), "r.toml"))
    pipe.fit()
    tok, ids = pipe.tokenizers["text"], pipe.task.ids("val")
    m = pipe.evaluate("val")
    assert ids.tolist().count(tok.eot_id) == 1 and m["tokens"] == (len(ids) - 1) // 16 * 16
    unscored = tok.decode_ids(ids[:1]) + tok.decode_ids(ids[m["tokens"] + 1:])
    assert m["chars"] == sum(len(ex["text"]) for ex in pipe.examples("val")) - len(unscored)
    assert m["bits_per_char"] == pytest.approx(m["loss"] * m["tokens"] / np.log(2) / m["chars"])


def test_conformance_kit_passes():
    from seqmodel.conformance import run_checks

    lines = []
    assert run_checks(BPETokenizer, "text", out=lines.append), lines
