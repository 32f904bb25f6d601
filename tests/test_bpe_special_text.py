"""Special-token strings typed in text (issue 19 item 3): encoded as text by default, as the
special token or refused on request; identical through the batch encoder; exact round trips;
pretrained files too; and training never learns a merge across such a string."""

import json

import pytest
from conftest import make_text
from seqmodel_tokenizers.bpe import BPEConfig, BPETokenizer, split_at

from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError
from seqmodel.recipe.schema import parse_recipe
from tokenizers import Tokenizer

EOT = "<|endoftext|>"
TYPED = ["a<|endoftext|>b", EOT, "x <|endoftext|>\n<|endoftext|><|endoftext|>y", "!!<|endoftext|>??", "<|sep|>|>",
         "<|endoftext|", "the <|pad|> and <|sep|>\n"]


def fitted(text: str = "", **config) -> BPETokenizer:
    tok = BPETokenizer(BPEConfig(vocab_size=400, special_tokens=["<|pad|>", "<|sep|>"], **config), "text")
    tok.fit([text or make_text(300)])
    return tok


def without_added_tokens(tok: BPETokenizer) -> Tokenizer:
    """The same vocabulary and merges with the added-token table emptied: the library then has no
    special tokens to look for, so it encodes every string as text (the independent reference)."""
    state = json.loads(tok.tok.to_str())
    state["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(state))


def long(text: str) -> str:
    """`text` inside a document long enough for the parallel batch encoder."""
    return (make_text(200, seed=5) + text + "\n") * 3


@pytest.fixture(scope="module")
def modes() -> dict[str, BPETokenizer]:
    return {mode: fitted(specials_in_text=mode) for mode in ("text", "special", "error")}


@pytest.mark.parametrize("text", TYPED)
def test_default_encodes_special_strings_as_their_bytes(modes, text):
    tok = modes["text"]
    ids = tok.encode_ids(text).tolist()
    assert ids == without_added_tokens(tok).encode(text, add_special_tokens=False).ids
    assert not set(ids) & set(tok._specials)
    assert tok.decode_ids(ids) == text


@pytest.mark.parametrize("mode", ["text", "special"])
@pytest.mark.parametrize("text", TYPED)
def test_batch_encoder_agrees_with_single_encode(modes, mode, text):
    tok, doc = modes[mode], long(text)
    ids = tok.encode_ids(doc).tolist()
    assert tok._cuttable and len(doc) > 4096
    assert ids == tok.tok.encode(doc, add_special_tokens=False).ids
    assert tok.decode_ids(ids) == doc


def test_special_mode_reads_the_special_token(modes):
    tok = modes["special"]
    ids = tok.encode_ids("a<|endoftext|>b<|sep|>").tolist()
    assert ids.count(tok.eot_id) == 1 and ids[-1] == tok.tok.token_to_id("<|sep|>")
    assert tok.decode_ids(ids) == "a<|endoftext|>b<|sep|>"


@pytest.mark.parametrize("text,token,at", [("a<|endoftext|>b", EOT, 1), ("the <|pad|> and <|sep|>\n", "<|pad|>", 4),
                                           (long("!<|sep|>"), "<|sep|>", len(make_text(200, seed=5)) + 1)])
def test_error_mode_refuses_the_text_naming_the_token(modes, text, token, at):
    with pytest.raises(UserError) as err:
        modes["error"].encode_ids(text)
    message = str(err.value)
    assert repr(token) in message and f"at character {at:,}" in message and "\n" not in message
    assert modes["error"].encode_ids("<|endoftext|").tolist() == modes["text"].encode_ids("<|endoftext|").tolist()


@pytest.mark.parametrize("mode", ["text", "special"])
def test_pretrained_file_follows_the_option(modes, tmp_path, mode):
    modes["special"].save(tmp_path)
    tok = BPETokenizer(BPEConfig(path=str(tmp_path / "tokenizer.json"), specials_in_text=mode), "text")
    tok.fit([])
    ids = tok.encode_ids("a<|endoftext|>b").tolist()
    assert (tok.eot_id in ids) == (mode == "special") and tok.decode_ids(ids) == "a<|endoftext|>b"
    again = BPETokenizer(BPEConfig(specials_in_text=mode), "text")
    again.load(tmp_path)
    assert again.encode_ids("a<|endoftext|>b").tolist() == ids


def test_split_at_keeps_every_character():
    assert split_at("a<|x|>b<|x|><|xy|>", ["<|x|>", "<|xy|>"]) == ["a", "<|x|>", "b", "<|x|>", "<|xy|>"]
    assert split_at("plain", ["<|x|>"]) == ["plain"] and split_at("", ["<|x|>"]) == [""]


def tokens(tok: BPETokenizer) -> set[str]:
    return {tok.decode_ids([i]) for i in range(tok.spec().vocab_size)}


@pytest.mark.parametrize("mode", ["text", "special"])
def test_training_learns_no_merge_across_a_typed_special_string(mode):
    corpus = "word!!<|endoftext|>??next " * 300  # GPT-2 pre-tokens "!!<|" and "|>??" span the string's edges
    tok = fitted(corpus, specials_in_text=mode, min_frequency=1)
    learned = tokens(tok)
    crossing = {t for t in learned if "!<" in t or ">?" in t}
    assert not crossing
    assert {"!!", "??"} <= learned  # merges on either side are still learned
    assert ("endoftext" in learned) == (mode == "text")  # the typed string is text only in text mode
    assert tok.decode_ids(tok.encode_ids(corpus)) == corpus


def test_error_mode_refuses_training_text_with_a_special_string():
    with pytest.raises(UserError, match=r"training split contains the special token '<\|sep\|>' at character 2"):
        fitted("ab<|sep|>", specials_in_text="error")


def test_lm_task_keeps_a_document_that_mentions_eot_whole(tmp_path):
    docs = ["the string <|endoftext|> ends GPT-2 documents\n" + make_text(60, seed=1), make_text(60, seed=2)]
    for k, doc in enumerate(docs):
        (tmp_path / f"doc{k}.txt").write_text(doc)
    recipe = {"model": {"layers": 1, "d_model": 16, "heads": 2, "context": 16},
              "data": {"source": "text", "paths": [str(p) for p in sorted(tmp_path.glob("doc*.txt"))]},
              "tokenizer": {"kind": "bpe", "vocab_size": 300}, "task": {"kind": "lm"}}
    pipe = Pipeline(parse_recipe(recipe, "r.toml"))
    pipe.fit()
    tok, train = pipe.tokenizers["text"], [ex["text"] for ex in pipe.examples("train")]
    ids = pipe.task.ids("train").tolist()
    assert len(train) == 2 and EOT in train[0]
    assert ids.count(tok.eot_id) == 1 and tok.decode_ids(ids) == EOT.join(train)


def test_option_is_checked_in_the_recipe():
    recipe = {"data": {"source": "text", "paths": ["x.txt"]}, "task": {"kind": "lm"},
              "tokenizer": {"kind": "bpe", "specials_in_text": "allow"}}
    with pytest.raises(UserError, match="specials_in_text: expected text, special or error, got 'allow'"):
        parse_recipe(recipe, "r.toml")
