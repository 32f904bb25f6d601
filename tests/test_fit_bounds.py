"""Fitting on big data (issue 21, tokenizer side): char vocabularies and BPE training read a
stream of texts, honour `fit_max_chars`, say what they read, and by default fit exactly what they
fitted before (every character of every document)."""

import itertools
import json

import pytest
from conftest import make_text
from seqmodel_tokenizers.bpe import BPEConfig, BPETokenizer
from seqmodel_tokenizers.char import CharConfig, CharTokenizer

from seqmodel.errors import UserError
from seqmodel.recipe.schema import parse_recipe

DOCS = [make_text(80, seed=1), "ünïcödé 日本語 🎉\n" + make_text(40, seed=2), make_text(60, seed=3) + "zebra quux\n"]


def truncated(docs: list[str], n: int) -> list[str]:
    """The first `n` characters of the documents in order, the last one cut (written naively)."""
    out, left = [], n
    for doc in docs:
        if left <= 0:
            break
        out.append(doc[:left])
        left -= len(doc)
    return out


def char_vocab(docs, **config) -> list[str]:
    tok = CharTokenizer(CharConfig(**config), "text")
    tok.fit(docs)
    return tok.chars


def bpe_state(docs, **config) -> str:
    tok = BPETokenizer(BPEConfig(vocab_size=300, min_frequency=1, **config), "text")
    tok.fit(docs)
    return tok.tok.to_str()


def test_char_default_is_every_character_of_every_document():
    assert char_vocab(iter(DOCS)) == sorted(set("".join(DOCS)))


@pytest.mark.parametrize("n", [1, 500, len(DOCS[0]), len(DOCS[0]) + 3, len(DOCS[0]) + len(DOCS[1]) + 10])
def test_char_bound_equals_fitting_the_truncated_text(n):
    cut = truncated(DOCS, n)
    assert sum(map(len, cut)) == n
    assert char_vocab(iter(DOCS), fit_max_chars=n) == char_vocab(cut) == sorted(set("".join(DOCS)[:n]))


@pytest.mark.parametrize("n", [700, len(DOCS[0]) + 50])
def test_bpe_bound_equals_training_on_the_truncated_text(n):
    bounded = bpe_state(iter(DOCS), fit_max_chars=n)
    assert bounded == bpe_state(truncated(DOCS, n))
    assert bounded != bpe_state(DOCS)


def test_bpe_default_trains_on_everything():
    assert bpe_state(iter(DOCS)) == bpe_state(DOCS, fit_max_chars=sum(map(len, DOCS)))


@pytest.mark.parametrize("fit", [char_vocab, bpe_state])
def test_a_bounded_fit_reads_an_endless_stream_only_up_to_the_bound(fit):
    endless = itertools.cycle(DOCS)  # a stream with no end: only the bound can stop the fit
    assert fit(endless, fit_max_chars=2_000) == fit(truncated(DOCS * 2, 2_000))


def test_char_fit_says_what_it_read(capsys):
    text = "abcab\n" * 1000
    char_vocab([text, text])
    assert capsys.readouterr().err == "seqmodel: char tokenizer: 4 characters from 12,000 characters of text\n"
    char_vocab([text, text], fit_max_chars=7000)
    assert capsys.readouterr().err == ("seqmodel: char tokenizer: 4 characters from 7,000 characters of text "
                                       "(stopped at fit_max_chars = 7,000)\n")
    char_vocab([text, ""], fit_max_chars=6000)  # the bound is the end of the text: nothing was left unread
    assert capsys.readouterr().err == "seqmodel: char tokenizer: 4 characters from 6,000 characters of text\n"


def test_bpe_fit_says_what_it_read(capsys):
    tok = BPETokenizer(BPEConfig(vocab_size=300, min_frequency=1), "text")
    tok.fit(DOCS)
    merges = len(json.loads(tok.tok.to_str())["model"]["merges"])
    assert 300 - 256 - 1 == merges  # 256 bytes, one special token, the rest merges
    chars = sum(map(len, DOCS))
    assert capsys.readouterr().err == f"seqmodel: bpe tokenizer: 300 tokens ({merges} merges) from {chars:,} characters of text\n"
    BPETokenizer(BPEConfig(vocab_size=300, fit_max_chars=1000), "text").fit(DOCS)
    assert capsys.readouterr().err.endswith("from 1,000 characters of text (stopped at fit_max_chars = 1,000)\n")


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_bound_is_checked_in_the_recipe(kind):
    recipe = {"data": {"source": "text", "paths": ["x.txt"]}, "task": {"kind": "lm"},
              "tokenizer": {"kind": kind, "fit_max_chars": -1}}
    with pytest.raises(UserError, match=r"fit_max_chars: must be 0 \(no bound\) or positive, got -1"):
        parse_recipe(recipe, "r.toml")


@pytest.mark.parametrize("tok", [CharTokenizer(CharConfig(), "text"), BPETokenizer(BPEConfig(), "text")])
def test_a_field_that_is_not_text_is_a_one_line_error(tok):
    with pytest.raises(UserError, match="tokenizer: expected text \\(a string\\) in the training split, got dict"):
        tok.fit([{"state": [0.1]}])
