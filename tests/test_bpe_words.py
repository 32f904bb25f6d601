"""The bpe tokenizer's fast paths (pre-token cache for ASCII text, pieces through the batch
encoder, parts of a large file) give exactly the ids of the library's plain `encode` of each
whole document: ASCII edge cases, unicode, typed special strings, empty documents, a full cache."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_text, small_lm_recipe
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from seqmodel_plugins.sources import text_files
from seqmodel_plugins.sources.text_files import cut_parts
from seqmodel_tokenizers import bpe_encode
from seqmodel_tokenizers.bpe import BPEConfig, BPETokenizer
from seqmodel_tokenizers.bpe_words import GPT2_ASCII, WordCache, eligible

from seqmodel.data import store
from seqmodel.data.pipeline import Pipeline
from seqmodel.recipe.schema import load_recipe
from tokenizers import Tokenizer, normalizers

EOT = "<|endoftext|>"
ASCII_EDGES = "ab Z09 \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x00\x7f'.!-_<|>"
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "''", "' s"]
settings_ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def fitted(**config) -> BPETokenizer:
    tok = BPETokenizer(BPEConfig(vocab_size=500, special_tokens=["<|sep|>"], **config), "text")
    tok.fit([make_text(400) + "it's we'll they're I'm you'd 1999 2024 x1 --- ... " * 20])
    return tok


@pytest.fixture(scope="module")
def modes() -> dict[str, BPETokenizer]:
    return {mode: fitted(specials_in_text=mode) for mode in ("text", "special")}


def plain(tok: BPETokenizer, text: str) -> list[int]:
    """The reference: the library's own single encode of the whole text."""
    return tok.tok.encode(text, add_special_tokens=False).ids


@settings_
@given(st.lists(st.sampled_from([*ASCII_EDGES, *CONTRACTIONS, "  ", " \n", "the", " king"]), max_size=60).map("".join))
@example("a \x1c b\x0b\x0c c\x1f'sd 's\n\n  \t x'll 09 9a a9\r\n")
def test_ascii_pre_token_cache_gives_the_library_ids(modes, text):
    for tok in modes.values():
        words = WordCache(tok.tok, [EOT, "<|sep|>"])
        assert words.takes(text)
        assert words.encode([text])[0].tolist() == plain(tok, text)


def test_a_full_cache_starts_again_with_the_same_ids(modes):
    tok = modes["text"]
    texts = [make_text(30, seed=k) for k in range(6)]
    small = WordCache(tok.tok, [EOT], limit=40)
    for text in texts:
        assert small.encode([text])[0].tolist() == plain(tok, text)
    seen = {w for text in texts for w in GPT2_ASCII.findall(text)}
    assert len(small.index) < len(seen)  # it started again


DOCUMENTS = [
    "",
    make_text(800, seed=1),  # long ASCII: the pre-token cache
    make_text(300, seed=2) + "naïve café — 日本語 🎉\n" + make_text(300, seed=3) + "e\u0301\u00a0x\u3000\n",  # unicode
    f"a{EOT}b\n" + make_text(400, seed=4) + f"{EOT}\n{EOT}{EOT} <|sep|>\n" + make_text(50, seed=5),  # typed specials
    "",
    "\n\n  \n",
    "short one's",
    "x" * 9000 + "\n" + "日" * 5000,  # no cut point for thousands of characters
]


@pytest.mark.parametrize("mode", ["text", "special"])
def test_documents_encode_like_plain_encode_whole_and_in_parts(modes, mode):
    tok = modes[mode]
    assert tok._encoder.words is not None and tok._cuttable
    reference = [plain(tok, doc) for doc in DOCUMENTS]
    assert [tok.encode_ids(doc).tolist() for doc in DOCUMENTS] == reference
    for size in (64, 5000):
        cut = [list(cut_parts(iter([doc]), size)) for doc in DOCUMENTS]
        assert len(cut[1]) > 1 and ["".join(parts) for parts in cut] == DOCUMENTS
        in_parts = [np.concatenate([np.zeros(0, np.int64), *tok.encode_parts(iter(parts))]).tolist() for parts in cut]
        assert in_parts == reference
    assert (tok.eot_id in reference[3]) == (mode == "special")


def joined(tok: BPETokenizer, docs: list[str]) -> list[int]:
    """The plain encode of each document, the end-of-text id between them (what a store holds)."""
    return [i for k, doc in enumerate(docs) for i in ([tok.eot_id] if k else []) + plain(tok, doc)]


def bpe_recipe(tmp: Path, data: str) -> Path:
    return small_lm_recipe(tmp, data, 'kind = "bpe"\nvocab_size = 400')


def prepared_streams(recipe: Path) -> tuple[Pipeline, dict[str, list[int]]]:
    pipe = Pipeline(load_recipe(recipe))
    pipe.fit()
    ctx = pipe.context()
    streams = {split: ctx.stream("text", split) for split in ("train", "val")}
    assert all(isinstance(s, store.TokenStream) for s in streams.values())
    return pipe, {split: s.tolist() for split, s in streams.items()}


def test_a_text_store_in_parts_is_the_plain_encode_of_its_documents(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMODEL_STORES", str(tmp_path / "stores"))
    monkeypatch.setattr(text_files, "PART", 3000)  # many parts per file
    files = []
    for k, doc in enumerate(d for d in DOCUMENTS if d.strip()):
        files.append(tmp_path / f"doc{k}.txt")
        files[-1].write_text(doc)
    pipe, streams = prepared_streams(bpe_recipe(tmp_path, f'source = "text"\npaths = {json.dumps(list(map(str, files)))}'))
    tok, train = pipe.tokenizers["text"], [ex["text"] for ex in pipe.examples("train")]
    assert len(train) == len(files) and any(EOT in d for d in train) and any(not d.isascii() for d in train)
    for split, ids in streams.items():
        assert ids == joined(tok, [ex["text"] for ex in pipe.examples(split)])


def test_an_hf_store_with_empty_documents_is_the_plain_encode_of_its_documents(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMODEL_STORES", str(tmp_path / "stores"))
    rows = tmp_path / "docs.jsonl"
    rows.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in DOCUMENTS * 3))
    data = f'source = "hf"\nname = "json"\ndata_files = "{rows}"\nval_fraction = 0.3\ncache_dir = "{tmp_path / "hf"}"'
    pipe, streams = prepared_streams(bpe_recipe(tmp_path, data))
    tok = pipe.tokenizers["text"]
    for split, ids in streams.items():
        docs = [ex["text"] for ex in pipe.examples(split)]
        assert "" in docs and any(len(d) > 4096 for d in docs)
        assert ids == joined(tok, docs)


def test_typed_special_strings_skip_the_cache(modes):
    words = modes["special"]._encoder.words
    assert not words.takes(f"the {EOT} king") and not words.takes("a <|sep|>") and not words.takes("café")
    assert words.takes("the <|endoftext| king")


def with_state(tok: BPETokenizer, change) -> Tokenizer:
    state = json.loads(tok.tok.to_str())
    change(state)
    return Tokenizer.from_str(json.dumps(state))


@pytest.mark.parametrize("change", [
    lambda s: s.update(normalizer={"type": "Lowercase"}),
    lambda s: s["pre_tokenizer"].update(add_prefix_space=True),
    lambda s: s["model"].update(dropout=0.5),
])
def test_other_tokenizer_settings_do_not_use_the_cache(modes, change):
    assert eligible(modes["text"].tok)
    assert not eligible(with_state(modes["text"], change))


def test_truncation_does_not_use_the_cache(modes):
    tok = Tokenizer.from_str(modes["text"].tok.to_str())
    tok.enable_truncation(16)
    assert not eligible(tok)


def test_a_normalizing_pretrained_file_still_encodes_like_plain_encode(modes, tmp_path):
    tok = with_state(modes["text"], lambda s: s.update(normalizer={"type": "Lowercase"}))
    tok.normalizer = normalizers.Lowercase()
    tok.save(str(tmp_path / "tokenizer.json"))
    bpe = BPETokenizer(BPEConfig(path=str(tmp_path / "tokenizer.json")), "text")
    bpe.fit([])
    assert bpe._encoder.words is None
    text = make_text(600, seed=9).upper()
    assert bpe.encode_ids(text).tolist() == plain(bpe, text)


def test_a_stream_of_parts_encodes_alike_with_worker_processes(modes, monkeypatch):
    monkeypatch.setattr(bpe_encode, "POOL_AFTER", 1)
    tok = modes["special"]
    texts = [doc for doc in DOCUMENTS for _ in range(2)]
    seen = []
    out = list(tok._encoder.encode_stream(iter(texts), seen.append, workers=2))
    assert seen == texts and [ids.tolist() for ids in out] == [plain(tok, t) for t in texts]


def test_a_worker_that_stopped_leaves_its_texts_to_this_process(modes, monkeypatch):
    monkeypatch.setattr(bpe_encode, "POOL_AFTER", 0)
    started = []

    class Stopping(bpe_encode.Worker):
        def __init__(self, encoder):
            super().__init__(encoder)
            started.append(self)
            self.proc.kill()
            self.proc.wait()

    monkeypatch.setattr(bpe_encode, "Worker", Stopping)
    tok = modes["text"]
    texts = DOCUMENTS[1:4] * 2
    assert [ids.tolist() for ids in tok._encoder.encode_stream(iter(texts), workers=1)] == [plain(tok, t) for t in texts]
    assert len(started) == 1 and not started[0].alive


def test_a_stream_left_early_stops_its_workers(modes, monkeypatch):
    monkeypatch.setattr(bpe_encode, "POOL_AFTER", 0)
    started = []

    class Recorded(bpe_encode.Worker):
        def __init__(self, encoder):
            super().__init__(encoder)
            started.append(self)

    monkeypatch.setattr(bpe_encode, "Worker", Recorded)
    tok = modes["text"]
    texts = [make_text(3000, seed=k) for k in range(6)]  # results larger than a pipe holds
    stream = tok._encoder.encode_stream(iter(texts), workers=2)
    assert next(stream).tolist() == plain(tok, texts[0])
    stream.close()  # the second worker's result is never read
    assert len(started) == 2 and all(w.proc.returncode is not None for w in started)
