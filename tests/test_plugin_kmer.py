"""The example third-party plugin (plugins/seqmodel-kmer), installed as its own distribution:
k-mer tokenizer properties, the FASTA/synthetic source, and the recipe end to end."""

import ast
import gzip
import json
from importlib.metadata import PackageNotFoundError, distribution

import numpy as np
import pytest
import torch
from conftest import REPO, cli
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    distribution("seqmodel-kmer")
except PackageNotFoundError:
    pytest.skip("the example plugin is not installed: pip install -e plugins/seqmodel-kmer", allow_module_level=True)

from seqmodel_kmer.source import FastaConfig, FastaSource, read_fasta, synthetic_records
from seqmodel_kmer.tokenizer import ALPHABETS, EOS, UNK, KmerConfig, KmerTokenizer

import seqmodel
from seqmodel.cli import main
from seqmodel.config import build
from seqmodel.errors import UserError

PACKAGE = REPO / "plugins" / "seqmodel-kmer"
RECIPE = PACKAGE / "recipes" / "kmer_lm.toml"


def tok(**kw) -> KmerTokenizer:
    return KmerTokenizer(build(KmerConfig, kw, "[tokenizer]"), "dna")


def naive_kmers(seq: str, k: int, stride: int) -> list[str]:
    """Independent reference: the windows and the tail, as strings."""
    if len(seq) < k:
        return [seq] if seq else []
    starts = list(range(0, len(seq) - k + 1, stride))
    out = [seq[s : s + k] for s in starts]
    rest = len(seq) - (starts[-1] + k)
    return out + ([seq[-rest:]] if rest else [])


@st.composite
def sequences(draw):
    alphabet = draw(st.sampled_from(sorted(ALPHABETS)))
    k = draw(st.integers(1, 4 if alphabet == "protein" else 6))
    stride = draw(st.integers(1, k))
    lines = draw(st.lists(st.text(alphabet=ALPHABETS[alphabet], max_size=30), min_size=1, max_size=3))
    return alphabet, k, stride, "\n".join(lines)


@settings(max_examples=300, deadline=None)
@given(sequences())
def test_round_trip_and_pieces_match_naive_windows(case):
    alphabet, k, stride, text = case
    t = tok(alphabet=alphabet, k=k, stride=stride)
    ids = t.encode(text).ids
    assert t.decode_ids(ids) == text
    pieces = [t.piece(i) for i in ids.tolist()]
    expected = []
    for j, line in enumerate(text.split("\n")):
        expected += (["\n"] if j else []) + naive_kmers(line, k, stride)
    assert pieces == expected
    assert ids.dtype == torch.int64 and all(0 <= i < t.spec().vocab_size for i in ids.tolist())


@pytest.mark.parametrize("alphabet, k", [("dna", 1), ("dna", 3), ("protein", 2)])
def test_vocabulary_is_every_kmer_and_tail_once(alphabet, k):
    t = tok(alphabet=alphabet, k=k)
    A = len(ALPHABETS[alphabet])
    pieces = [t.piece(i) for i in range(t.spec().vocab_size)]
    assert t.spec().vocab_size == 3 + sum(A**n for n in range(1, k + 1))
    assert len(set(pieces)) == len(pieces) and pieces[:3] == ["<pad>", "<unk>", "\n"]
    assert sum(len(p) == k and set(p) <= set(ALPHABETS[alphabet]) for p in pieces) == A**k
    with pytest.raises(ValueError, match="outside the vocabulary"):
        t.piece(len(pieces))


def test_stride_counts_and_lm_separator():
    seq = "ACGTACGTAC"  # 10 bases
    assert len(tok(k=3, stride=1).encode(seq)) == 8
    assert len(tok(k=3, stride=3).encode(seq)) == 4  # 3 codons + tail "C"
    assert len(tok(k=4, stride=2).encode(seq)) == 4  # starts 0, 2, 4, 6: no tail
    t = tok(k=3, stride=3)
    assert t.eot_id == EOS and t.encode("\n").ids.tolist() == [EOS]
    assert t.decode_ids([*t.encode("ACGT").ids.tolist(), EOS, *t.encode("GG").ids.tolist()]) == "ACGT\nGG"


def test_unknown_characters():
    with pytest.raises(UserError, match=r"outside the dna alphabet ACGT: 'NX'.*unknown = \"replace\""):
        tok().encode("ACGNNX")
    with pytest.raises(UserError, match="'acg'"):
        tok().fit(["ACGT", "acg"])
    t = tok(unknown="replace", k=3, stride=3)
    ids = t.encode("ACGNAAGGG").ids.tolist()
    assert ids[1] == UNK and UNK not in (ids[0], ids[2])
    assert t.decode_ids(ids) == "ACGNNNGGG"


@pytest.mark.parametrize("table, key", [({"stride": 4}, "stride"), ({"k": 0}, "k"), ({"k": 11}, "k"),
                                        ({"alphabet": "rna"}, "alphabet"), ({"unknown": "drop"}, "unknown"),
                                        ({"kk": 3}, "kk")])
def test_config_errors_name_the_key(table, key):
    with pytest.raises(UserError, match=rf"^\[tokenizer\] {key}: "):
        build(KmerConfig, table, "[tokenizer]")


def test_save_load_and_corrupt_state(tmp_path):
    a = tok(alphabet="protein", k=2, stride=2)
    a.save(tmp_path)
    b = tok()
    b.load(tmp_path)
    assert b.spec() == a.spec() and b.encode("KWKLF").ids.tolist() == a.encode("KWKLF").ids.tolist()
    (tmp_path / "kmer.json").write_text('{"alphabet": "dna", "k": 2, "stride": 5}')
    with pytest.raises(UserError, match="corrupt k-mer tokenizer state"):
        b.load(tmp_path)


def test_package_uses_only_public_contracts():
    allowed = {"seqmodel.plugin", "seqmodel.segments", "seqmodel.errors"}
    for path in (PACKAGE / "seqmodel_kmer").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert not name.startswith("seqmodel") or name.startswith("seqmodel_kmer") or name in allowed, (path, name)


# -- source ----------------------------------------------------------------------------------------
def test_synthetic_data_is_deterministic_and_split():
    cfg = FastaConfig(count=200, seed=3)
    a, b = synthetic_records(cfg), synthetic_records(FastaConfig(count=200, seed=3))
    assert a == b and a != synthetic_records(FastaConfig(count=200, seed=4))
    src = FastaSource(cfg)
    parts = {s: src.split(s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [160, 20, 20]
    assert sum(parts.values(), []) == a
    lo, hi = cfg.lengths()
    assert all(lo <= len(r["sequence"]) <= hi and set(r["sequence"]) <= set("ACGT") for r in a)
    planted = [r for r in a if r["label"]]
    assert 0.35 < len(planted) / len(a) < 0.65
    assert all(any(m in r["sequence"] for m in ("TATAAT", "TTGACA", "GAATTC", "CACGTG")) for r in planted)


def test_synthetic_dna_follows_its_markov_chain():
    seqs = [r["sequence"] for r in synthetic_records(FastaConfig(count=400, motif_rate=0.0))]
    pairs = [(x, y) for s in seqs for x, y in zip(s, s[1:])]
    follow = np.mean(["ACGT".index(y) == ("ACGT".index(x) + 1) % 4 for x, y in pairs])
    assert abs(follow - 0.55) < 0.01


def test_protein_peptides_are_amp_like():
    recs = synthetic_records(FastaConfig(alphabet="protein", count=300))
    text = "".join(r["sequence"] for r in recs)
    assert set(text) <= set(ALPHABETS["protein"]) and all(12 <= len(r["sequence"]) <= 48 for r in recs)
    assert (text.count("K") + text.count("R")) / len(text) > 0.12  # cationic


def test_fasta_files(tmp_path):
    text = ">seq1 first\nACGT\nacgt\n\n; a comment\n>seq2\nGGGG\n>seq3\nTT\n>\nCA\n"
    (tmp_path / "a.fa").write_text(text)
    with gzip.open(tmp_path / "b.fa.gz", "wt") as f:
        f.write(">gz1\nAAAA\n")
    recs = read_fasta(str(tmp_path / "a.fa"))
    assert [r["sequence"] for r in recs] == ["ACGTACGT", "GGGG", "TT", "CA"]
    assert recs[0]["id"] == "seq1 first" and recs[3]["id"] == "a.fa:10"
    assert read_fasta(str(tmp_path / "a.fa"), uppercase=False)[0]["sequence"] == "ACGTacgt"
    src = FastaSource(FastaConfig(path=str(tmp_path / "*.fa*"), val_fraction=0.2))
    assert src.fields == ("id", "sequence")
    assert [r["id"] for r in src.split("test")] == ["gz1"] and len(src.split("train")) == 3
    assert len(src.identity()["files"]) == 2 and len(src.identity()["sha256"]) == 64


@pytest.mark.parametrize("content, message", [("ACGT\n>x\nAC\n", "a.fa:1: sequence data before the first '>'"),
                                              (">x\nAC\n>y\nGG\n", "at least 3 are needed")])
def test_fasta_errors(tmp_path, content, message):
    (tmp_path / "a.fa").write_text(content)
    with pytest.raises(UserError, match=message):
        FastaSource(FastaConfig(path=str(tmp_path / "a.fa"))).split("train")
    with pytest.raises(UserError, match="matches no file"):
        FastaSource(FastaConfig(path=str(tmp_path / "missing.fa"))).split("train")


# -- installed plugin, end to end ------------------------------------------------------------------
def test_listed_by_seqmodel_plugins(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    mine = {(r["group"], r["name"]): r for r in rows if r["distribution"] == "seqmodel-kmer"}
    assert set(mine) == {("seqmodel.tokenizers", "kmer"), ("seqmodel.sources", "fasta")}
    assert all(r["version"] == "0.1.0" and r["error"] is None for r in mine.values())
    assert any(r["name"] == "char" and r["error"] is None for r in rows)


def test_conformance_cli(capsys):
    assert main(["plugins", "check", "kmer"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("9/9 checks passed") and "FAIL" not in out


def test_recipe_trains_through_the_cli(tmp_path):
    first = RECIPE.read_text().splitlines()[0]
    assert first == "# seqmodel run plugins/seqmodel-kmer/recipes/kmer_lm.toml"
    out = tmp_path / "run"
    cli("run", RECIPE, "--out", out, "--no-progress", "--set", "train.steps=40", "--set", "train.eval_every=40",
        "--set", "train.threads=1", "--set", "data.count=300", "--set", "sample.max_new_tokens=20", cwd=REPO)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40 and rows[-1]["val_loss"] < np.log(64) + 0.2  # below uniform over codons (~4.16)
    plugins = json.loads((out / "run.json").read_text())["plugins"]
    assert any(p["distribution"] == "seqmodel-kmer" for p in plugins)
    assert json.loads((out / "tokenizers" / "dna" / "kmer.json").read_text())["k"] == 3
    run = seqmodel.load(out)
    ev = run.evaluate()
    assert ev["tokens"] > 0 and 0 < ev["bits_per_char"] < 2  # per base: below log2(4) = 2 bits
    assert set(run.generate("\n", max_new_tokens=30)) <= set("ACGT\n")


def bigram_loss(train: np.ndarray, val: np.ndarray, vocab: int, alpha: float = 0.01) -> float:
    """Independent reference: nats per token of an add-alpha token-bigram model fitted on train."""
    counts = np.full((vocab, vocab), alpha)
    np.add.at(counts, (train[:-1], train[1:]), 1)
    probs = counts / counts.sum(1, keepdims=True)
    return float(-np.log(probs[val[:-1], val[1:]]).mean())


@pytest.mark.slow
def test_recipe_beats_a_codon_bigram(tmp_path):
    out = tmp_path / "run"
    cli("run", RECIPE, "--out", out, "--no-progress", "--set", "train.threads=1", cwd=REPO)
    loss = seqmodel.load(out).evaluate()["loss"]
    src, t = FastaSource(FastaConfig()), tok(k=3, stride=3)
    stream = {s: t.encode("\n".join(r["sequence"] for r in src.split(s))).ids.numpy() for s in ("train", "val")}
    reference = bigram_loss(stream["train"], stream["val"], t.spec().vocab_size)
    assert 3.6 < reference < 3.7 and loss < reference - 0.02, (loss, reference)
