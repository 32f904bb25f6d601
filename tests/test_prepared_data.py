"""Prepared stores and lazy text reading: the same ids and batches as encoding in memory, a new
store for new data or a new tokenizer, damaged or half-written stores rebuilt, one-line errors for
bad UTF-8 and a full disk, one preparer among processes started together."""

import dataclasses
import errno
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SEQMODEL, cli, make_text, small_lm_recipe, tiny_char_recipe
from seqmodel_plugins.sources import text_files
from seqmodel_plugins.sources.text import TextConfig, TextSource

from seqmodel import files
from seqmodel.data import store
from seqmodel.data.pipeline import Pipeline
from seqmodel.recipe.schema import load_recipe
from seqmodel.task import Slice
from seqmodel.training.train import fingerprint


@pytest.fixture
def stores(tmp_path, monkeypatch) -> Path:
    """A fresh prepared-data folder for this test."""
    folder = tmp_path / "stores"
    monkeypatch.setenv("SEQMODEL_STORES", str(folder))
    return folder


def recipe_file(tmp: Path, paths: list[Path], tokenizer: str = 'kind = "char"') -> Path:
    return small_lm_recipe(tmp, f'source = "text"\npaths = {json.dumps([str(p) for p in paths])}', tokenizer)


def fitted(recipe: Path, *overrides: str) -> Pipeline:
    pipe = Pipeline(load_recipe(recipe, list(overrides)))
    pipe.fit()
    return pipe


def stream_folders(stores: Path) -> set[str]:
    return {p.name for p in (stores / "streams").iterdir() if p.is_dir()} if (stores / "streams").is_dir() else set()


@pytest.fixture
def two_files(tmp_path) -> list[Path]:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    special = "naïve café — 日本語 🎉\n"
    a.write_text(special + make_text(400, seed=1).replace("\n", "\r\n") + special)  # \r\n and multi-byte text
    b.write_text(make_text(300, seed=2))
    return [a, b]


# -- the prepared path equals the in-memory path --------------------------------------------------
@pytest.mark.parametrize("tokenizer", ['kind = "char"', 'kind = "bpe"\nvocab_size = 300'])
def test_prepared_and_in_memory_paths_give_identical_streams_and_batches(stores, tmp_path, two_files, tokenizer):
    pipe = fitted(recipe_file(tmp_path, two_files, tokenizer))
    ctx = pipe.context()
    for split in ("train", "val"):
        mapped, in_memory = ctx.stream("text", split), ctx.encode_stream("text", split)
        assert isinstance(mapped, store.TokenStream) and len(mapped) == len(in_memory) > 0
        assert torch.equal(mapped[:], in_memory)
        assert mapped.documents == 2  # one document per file, the separator (bpe) between them
    reference = fitted(recipe_file(tmp_path, two_files, tokenizer))
    reference.task.setup(dataclasses.replace(ctx, prepared=None))  # the same task, encoding in memory
    for split, train in (("train", True), ("val", False)):
        a, b = pipe.task.batches(split, train), reference.task.batches(split, train)
        for step in range(5):
            where = Slice(step, 0, 0, 4, 4)
            assert fingerprint(a.batch(where)) == fingerprint(b.batch(where))


def test_bpe_store_puts_the_separator_between_documents(stores, tmp_path, two_files):
    pipe = fitted(recipe_file(tmp_path, two_files, 'kind = "bpe"\nvocab_size = 300'))
    tok, stream = pipe.tokenizers["text"], pipe.context().stream("text", "train")
    docs = [ex["text"] for ex in pipe.examples("train")]
    expected = [*tok.encode_ids(docs[0]), tok.eot_id, *tok.encode_ids(docs[1])]
    assert stream.tolist() == expected
    assert list(stream.offsets) == [0, len(tok.encode_ids(docs[0])) + 1, len(expected)]
    assert stream.ids.dtype == np.uint16  # the smallest dtype that holds 300 ids


@pytest.mark.parametrize("seed", range(4))
def test_text_read_in_small_blocks_equals_the_whole_file(tmp_path, monkeypatch, stores, seed):
    rng = random.Random(seed)
    alphabet = ["a", "b", " ", "\n", "\r\n", "\r", "é", "日", "🎉", "\t"]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(200, 600)))
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    monkeypatch.setattr(text_files, "BLOCK", rng.choice([1, 2, 3, 5, 7]))  # blocks cut inside characters and \r\n
    monkeypatch.setattr(text_files, "MARK", 8)
    source = TextSource(TextConfig(paths=[str(path)], val_fraction=0.3))
    normalized = text.replace("\r\n", "\n")
    cut = int(len(normalized) * 0.7)
    assert source.split("train")[0]["text"] == normalized[:cut]
    assert source.split("val")[0]["text"] == normalized[cut:]
    parts = [list(doc) for doc in source.parts("val", "text").documents]
    assert "".join(parts[0]) == normalized[cut:]
    for doc_parts in (list(text_files.cut_parts([normalized[:k], normalized[k:]], size=16)) for k in (0, 50, 99)):
        assert "".join(doc_parts) == normalized
        for part in doc_parts[1:]:  # every cut is before a "\n" that follows a non-space character
            assert part.startswith("\n")
        for part in doc_parts[:-1]:
            assert not part[-1].isspace()


def test_text_identity_is_the_content_digest_before_the_lazy_reader(stores, tmp_path, two_files):
    import hashlib

    digest = hashlib.sha256()
    for f in two_files:  # the identity the text source had when it read whole files
        digest.update(str(f).encode() + b"\0" + f.read_text(encoding="utf-8").replace("\r\n", "\n").encode())
    source = TextSource(TextConfig(paths=[str(f) for f in two_files]))
    assert source.identity() == {"source": "text", "files": [str(f) for f in two_files], "sha256": digest.hexdigest()}
    assert TextSource(TextConfig(paths=[str(f) for f in two_files])).identity() == source.identity()  # memoized


# -- new data, new tokenizer: a new store -------------------------------------------------------
def test_changing_the_data_or_the_tokenizer_makes_a_new_store(stores, tmp_path, two_files):
    recipe = recipe_file(tmp_path, two_files)
    cli("prepare", recipe)
    first = stream_folders(stores)
    assert len(first) == 2  # train and val
    old_ids = fitted(recipe).context().stream("text", "train")[:]
    two_files[1].write_text("Zebras quietly came first.\n" + two_files[1].read_text())  # new text, new characters
    pipe = fitted(recipe)
    new = pipe.context().stream("text", "train")
    assert torch.equal(new[:], pipe.context().encode_stream("text", "train"))
    assert not torch.equal(new[:], old_ids)
    cli("prepare", recipe)
    second = stream_folders(stores)
    assert len(second) == 4 and first < second  # the old stores are kept, never read for the new data
    cli("prepare", recipe, "--set", "tokenizer.unknown=\"skip\"")  # same vocabulary, new tokenizer config: refit
    cli("prepare", recipe_file(tmp_path, two_files, 'kind = "bpe"\nvocab_size = 300'))
    assert len(stream_folders(stores)) == 8


def test_a_second_run_reuses_the_fit_and_the_stores(stores, tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=2, eval_every=2)
    first = cli("run", recipe, "--out", tmp_path / "one", "--no-progress")
    assert "prepared the train split" in first.stderr and "fitted state reused" not in first.stderr
    second = cli("run", recipe, "--out", tmp_path / "two", "--no-progress")
    assert "prepared the" not in second.stderr and "char tokenizer (text): fitted state reused" in second.stderr
    assert (tmp_path / "one" / "tokenizers" / "text" / "chars.json").read_text() == \
        (tmp_path / "two" / "tokenizers" / "text" / "chars.json").read_text()
    again = cli("eval", tmp_path / "two", "--json")
    assert "prepared the" not in again.stderr and json.loads(again.stdout)["tokens"] > 0


# -- damaged and half-written stores ------------------------------------------------------------
def test_a_truncated_store_is_detected_and_rebuilt_with_one_line(stores, tmp_path, two_files):
    recipe = recipe_file(tmp_path, two_files)
    cli("prepare", recipe, "--split", "train")
    (folder,) = (stores / "streams").glob("*/ids.bin")
    expected = folder.read_bytes()
    with open(folder, "r+b") as f:
        f.truncate(len(expected) // 2)
    done = cli("prepare", recipe, "--split", "train")
    lines = [ln for ln in done.stderr.splitlines() if "damaged" in ln]
    assert len(lines) == 1 and "ids.bin has" in lines[0] and "rebuilding it" in lines[0]
    assert folder.read_bytes() == expected
    assert "prepared now" in done.stdout


def test_a_store_without_its_marker_is_rebuilt(stores, tmp_path, two_files):
    recipe = recipe_file(tmp_path, two_files)
    cli("prepare", recipe, "--split", "train")
    (marker,) = (stores / "streams").glob(f"*/{files.COMPLETE}")
    marker.unlink()
    done = cli("prepare", recipe, "--split", "train")
    assert "never completed; rebuilding it" in done.stderr and marker.is_file()


KILL_BEFORE_MARKER = textwrap.dedent("""
    import os, signal, sys
    from seqmodel import cli
    from seqmodel.data import store
    def killed(tmp, folder):  # the ids are written; the process dies before the store is complete
        os.kill(os.getpid(), signal.SIGKILL)
    store.finish_folder = killed
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_a_preparation_killed_mid_write_is_never_mistaken_for_a_store(stores, tmp_path, two_files):
    recipe = recipe_file(tmp_path, two_files)
    cli("prepare", recipe, "--split", "train")  # the fit is cached, so the kill hits the store's writing
    (done_folder,) = stream_folders(stores)
    expected = (stores / "streams" / done_folder / "ids.bin").read_bytes()
    for f in (stores / "streams").iterdir():
        (os.remove if f.is_file() else __import__("shutil").rmtree)(f)
    killed = subprocess.run([sys.executable, "-c", KILL_BEFORE_MARKER, "prepare", str(recipe), "--split", "train"],
                            capture_output=True, text=True, env={**os.environ})
    assert killed.returncode == -9
    leftovers = [p for p in (stores / "streams").iterdir() if p.is_dir()]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".") and (leftovers[0] / "ids.bin").is_file()
    done = cli("prepare", recipe, "--split", "train")
    assert "prepared now" in done.stdout and "damaged" not in done.stderr
    assert [p.name for p in (stores / "streams").iterdir() if p.is_dir()] == [done_folder]  # leftovers removed
    assert (stores / "streams" / done_folder / "ids.bin").read_bytes() == expected


def test_processes_started_together_prepare_once(stores, tmp_path, two_files):
    recipe = recipe_file(tmp_path, two_files)
    procs = [subprocess.Popen([*SEQMODEL, "prepare", str(recipe), "--split", "train"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("prepared now" in out for out, _ in outs) == 1 and sum(" ready " in out for out, _ in outs) == 1
    assert sum("characters from" in err for _, err in outs) == 1  # one fit, too
    assert len(stream_folders(stores)) == 1


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("head, block, offset", [
    (("x" * 99 + "\n") * 50_000 + "é", None, "5,000,002"),  # a large file: past the first 4 MiB block
    ("abcdé", 5, "6"),  # the "é" cut by a block boundary, the bad byte just after it
])
def test_invalid_utf8_names_the_file_and_the_byte_offset(stores, tmp_path, monkeypatch, head, block, offset):
    if block:
        monkeypatch.setattr(text_files, "BLOCK", block)
    big = tmp_path / "big.txt"
    big.write_bytes(head.encode() + b"\xff" + b"tail\n" * 10)
    done = cli("prepare", recipe_file(tmp_path, [big]), check=False)
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() if not ln.startswith("seqmodel: ")]
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert errors[0].endswith(f"[data] {big}: not valid UTF-8 at byte {offset} (invalid start byte); "
                              "the text source reads UTF-8 files")


def test_a_full_disk_is_one_line_and_leaves_no_half_store(stores, tmp_path, two_files, monkeypatch):
    recipe = recipe_file(tmp_path, two_files)
    cli("prepare", recipe, "--split", "train")  # fit cached: the failure hits the store
    for f in (stores / "streams").iterdir():
        (os.remove if f.is_file() else __import__("shutil").rmtree)(f)

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.StoreWriter, "_flush", full)
    done = cli("prepare", recipe, "--split", "train", check=False)
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() if not ln.startswith("seqmodel: ")]
    assert len(errors) == 1 and "no space left on the device for the prepared data" in errors[0]
    assert not [p for p in (stores / "streams").iterdir() if p.is_dir()]  # no store, no temporary folder


def test_a_full_disk_while_saving_a_fit_is_one_line(stores, tmp_path, two_files, monkeypatch):
    def full(tmp, folder, record=""):
        raise OSError(errno.ENOSPC, "No space left on device")

    TextSource(TextConfig(paths=[str(f) for f in two_files])).identity()  # the scan is kept: the fit fails
    monkeypatch.setattr(files, "finish_folder", full)
    done = cli("prepare", recipe_file(tmp_path, two_files), check=False)
    errors = [ln for ln in done.stderr.splitlines() if not ln.startswith("seqmodel: ")]
    assert done.returncode == 2 and len(errors) == 1 and "no space left on the device" in errors[0]
    assert not [p for p in (stores / "fits").iterdir() if p.is_dir()]


@pytest.mark.parametrize("alphabet", ["ab\n", "abcdefghij klmnopqrstuvwxyz\n.,", "aé日🎉\n", "".join(map(chr, range(32, 700)))])
def test_char_ids_equal_a_naive_lookup_in_every_table_dtype(alphabet):
    from seqmodel_tokenizers.char import CharConfig, CharTokenizer

    from seqmodel.errors import UserError

    rng = random.Random(len(alphabet))
    train = alphabet + "".join(rng.choice(alphabet) for _ in range(3000))
    tok = CharTokenizer(CharConfig(), "text")
    tok.fit([train])
    assert tok.chars == sorted(set(train))
    text = "".join(rng.choice(alphabet) for _ in range(500))
    naive = [tok.chars.index(c) for c in text]
    assert tok.encode_ids(text).tolist() == naive and tok.encode_ids(text).dtype == np.int64
    assert [int(i) for part in tok.encode_parts([text[:100], text[100:]]) for i in part] == naive
    with pytest.raises(UserError) as error:
        tok.encode_ids(text + "\uffff\x00")
    assert "2 character(s) not in this run's vocabulary: '\\x00\\uffff'" in str(error.value)
    skipping = CharTokenizer(CharConfig(unknown="skip"), "text")
    skipping.fit([train])
    assert skipping.encode_ids("\x01" + text + "\x00\uffff").tolist() == naive
