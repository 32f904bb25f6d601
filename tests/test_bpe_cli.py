"""recipes/bpe_lm.toml end to end through the CLI on a small local text: check, run, eval --json,
tokenize --json and score --json."""

import json
import math

import pytest
from conftest import REPO, cli
from seqmodel_tokenizers.bpe import BPEConfig, BPETokenizer

RECIPE = REPO / "recipes" / "bpe_lm.toml"
TINY = ["model.layers=1", "model.d_model=32", "model.heads=2", "model.context=32", "tokenizer.vocab_size=300",
        "train.steps=30", "train.batch_size=8", "train.eval_every=15", "train.eval_batches=2", "train.warmup=5",
        "train.lr=0.01", "train.threads=1", "sample.max_new_tokens=20", "sample.num_samples=1"]


def tiny(corpus) -> list[str]:
    sets = ["data.source=text", f'data.paths=["{corpus}"]', *TINY]
    return [arg for s in sets for arg in ("--set", s)]


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("bpe") / "run"
    done = cli("run", RECIPE, "--out", out, "--no-progress", *tiny(corpus))
    assert "Traceback" not in done.stderr and "forked" not in done.stderr
    return out


def test_recipe_checks_and_builds_a_tiny_model(corpus):
    assert RECIPE.read_text().startswith("# seqmodel run recipes/bpe_lm.toml")
    done = cli("check", RECIPE, *tiny(corpus))
    assert "ok (decoder, 1 layers, d_model 32" in done.stdout and "text=bpe" in done.stdout


def test_run_trains_and_saves_the_library_json(bpe_run):
    assert (bpe_run / "tokenizers" / "text" / "tokenizer.json").is_file()
    rows = [json.loads(x) for x in (bpe_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30 and rows[-1]["val_loss"] < math.log(300)


def test_eval_counts_every_scored_token_and_its_characters(bpe_run, corpus):
    m = json.loads(cli("eval", bpe_run, "--json").stdout)
    text = corpus.read_text()
    val = text[int(len(text) * 0.9):]
    tok = BPETokenizer(BPEConfig(), "text")
    tok.load(bpe_run / "tokenizers" / "text")
    ids = tok.encode_ids(val)
    assert m["tokens"] == (len(ids) - 1) // 32 * 32
    unscored = tok.decode_ids(ids[:1]) + tok.decode_ids(ids[m["tokens"] + 1:])
    assert m["chars"] == len(val) - len(unscored) and m["chars"] > 1.5 * m["tokens"]
    assert m["bits_per_char"] == pytest.approx(m["loss"] * m["tokens"] / math.log(2) / m["chars"], rel=1e-9)


def test_tokenize_json_pieces_and_ids_round_trip(bpe_run):
    text = "The king doth speak of love.\n\nKING:"
    out = json.loads(cli("tokenize", bpe_run, "--text", text, "--json").stdout)
    assert "".join(out["pieces"]) == text and len(out["ids"]) < len(text)
    tok = BPETokenizer(BPEConfig(), "text")
    tok.load(bpe_run / "tokenizers" / "text")
    assert out["ids"] == tok.encode_ids(text).tolist()
    odd = "日本 🎉 e\u0301\r\n\t  x"
    ids = tok.encode_ids(odd).tolist()
    back = json.loads(cli("tokenize", bpe_run, "--ids", ",".join(map(str, ids)), "--json").stdout)
    assert back == {"text": odd}


def test_score_json_bits_per_character(bpe_run):
    text = "The king doth speak of love, and the queen doth go."
    out = json.loads(cli("score", bpe_run, "--text", text, "--json").stdout)
    toks = out["tokens"]
    assert "".join(t["token"] for t in toks) == text and toks[0]["logprob"] is None
    chars = len(text) - len(toks[0]["token"])
    bits = -sum(t["logprob"] for t in toks[1:]) / math.log(2)
    assert out["bits_per_char"] == pytest.approx(bits / chars, rel=1e-9)
