"""Prepared stores are checked when a run opens them: ids that changed since the store was
written (inside or outside the vocabulary) are found by the CRC-32 recorded at commit, reported in
one line and rebuilt, so evaluation sees the healthy data."""

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, tiny_char_recipe

from seqmodel.data import store


@pytest.fixture
def stores(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "stores"
    monkeypatch.setenv("SEQMODEL_STORES", str(folder))
    return folder


@pytest.fixture
def trained(tmp_path, stores, corpus) -> tuple[Path, dict]:
    """A tiny run and its healthy validation metrics."""
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4, eval_every=4, eval_batches=4)
    cli("run", recipe, "--out", tmp_path / "run", "--no-progress")
    return tmp_path / "run", json.loads(cli("eval", tmp_path / "run", "--json").stdout)


def val_ids(stores: Path) -> Path:
    (meta,) = [m for m in (stores / "streams").glob("*/meta.json") if json.loads(m.read_text())["split"] == "val"]
    return meta.parent / "ids.bin"


def damage(ids: Path, change) -> bytes:
    """Change every 5th id in place with `change` (old -> new array), keeping the file's times
    (as bit rot would); returns the healthy bytes."""
    healthy = ids.read_bytes()
    stat = ids.stat()
    data = np.frombuffer(healthy, np.uint8).copy()
    data[::5] = change(data[::5])
    assert (data != np.frombuffer(healthy, np.uint8)).any()
    ids.write_bytes(data.tobytes())
    os.utime(ids, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return healthy


def damaged_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "damaged" in line]


def test_changed_ids_inside_the_vocabulary_are_found_and_rebuilt(trained, stores, monkeypatch):
    run, healthy = trained
    vocab = len(json.loads((run / "tokenizers/text/chars.json").read_text())["chars"])
    ids = val_ids(stores)
    good = damage(ids, lambda x: (x.astype(np.int64) + 1) % vocab)
    with monkeypatch.context() as unchecked:
        unchecked.setattr(store, "verify", lambda folder, vocab_size: None)
        assert json.loads(cli("eval", run, "--json").stdout) != healthy  # trusted as it is, the damage counts
    done = cli("eval", run, "--json")
    (line,) = damaged_lines(done.stderr)
    assert "ids.bin does not match its checksum" in line and line.endswith("rebuilding it")
    assert json.loads(done.stdout) == healthy  # evaluated on the rebuilt, healthy ids
    assert ids.read_bytes() == good
    damage(ids, lambda x: (x.astype(np.int64) + 2) % vocab)
    prepared = cli("prepare", run / "recipe.toml")  # the recipe the run ran
    assert [ln.split()[0] for ln in prepared.stdout.splitlines() if "prepared now" in ln] == ["val"], prepared.stdout
    assert ids.read_bytes() == good


def test_ids_outside_the_vocabulary_are_rebuilt_without_a_traceback(trained, stores):
    run, healthy = trained
    ids = val_ids(stores)
    good = damage(ids, lambda x: np.full_like(x, 255))
    done = cli("eval", run, "--json")
    assert "Traceback" not in done.stderr and len(damaged_lines(done.stderr)) == 1, done.stderr
    assert json.loads(done.stdout) == healthy and ids.read_bytes() == good


def test_a_store_continued_after_a_stop_records_the_checksum_of_its_whole_file(tmp_path):
    folder = tmp_path / "s"
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 300, 5000), rng.integers(0, 300, 7000)
    writer = store.StoreWriter(folder, np.uint16, {}, partial=True)
    writer.start_document()
    writer.append(first)
    writer.save_progress({"at": 1})
    writer.append(rng.integers(0, 300, 999))  # written after the last record: dropped on continuing
    writer.close()
    writer = store.StoreWriter(folder, np.uint16, {}, partial=True)
    assert writer.progress == {"at": 1} and writer.tokens == len(first)
    writer.append(second)
    writer.commit()
    content = np.concatenate([first, second]).astype(np.uint16).tobytes()
    assert (folder / "ids.bin").read_bytes() == content
    assert json.loads((folder / "meta.json").read_text())["crc32"] == zlib.crc32(content)
    largest = int(max(first.max(), second.max()))
    store.verify(folder, largest + 1)
    with pytest.raises(store.Damaged, match=f"holds id {largest}, outside the vocabulary of {largest}"):
        store.verify(folder, largest)


def test_a_fitted_state_changed_since_it_was_saved_is_fitted_again_not_reused(tmp_path, stores, corpus):
    """A flipped character in a reused fit (still valid JSON) would give the run another
    vocabulary without a word: the fit's files are sealed with a digest at save."""
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1)
    cli("prepare", recipe)
    (chars_file,) = (stores / "fits").glob("*/chars.json")
    healthy = chars_file.read_text()
    state = json.loads(healthy)
    state["chars"][-1] = "\u263a"  # a character the corpus does not have
    chars_file.write_text(json.dumps(state))
    done = cli("run", recipe, "--out", tmp_path / "run", "--no-progress")
    assert len(damaged_lines(done.stderr)) == 1, done.stderr
    assert json.loads((tmp_path / "run" / "tokenizers/text/chars.json").read_text()) == json.loads(healthy)
    assert json.loads(chars_file.read_text()) == json.loads(healthy)  # the fit was saved again, healthy


def test_a_file_where_a_store_folder_belongs_is_replaced_by_the_store(tmp_path, stores, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1)
    cli("prepare", recipe)
    folder = val_ids(stores).parent
    healthy = (folder / "ids.bin").read_bytes()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    folder.write_bytes(b"not a store")
    cli("prepare", recipe)
    assert folder.is_dir() and (folder / "ids.bin").read_bytes() == healthy


def test_a_text_scan_memo_changed_since_it_was_written_is_scanned_again(tmp_path, stores, corpus):
    """The memo of a text source's scan (characters and read marks per file) places every read of
    a long file: one changed since it was written is not trusted."""
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1)
    cli("prepare", recipe)
    (memo,) = (stores / "text").glob("*/scan.json")
    healthy = json.loads(memo.read_text())
    changed = json.loads(memo.read_text())
    changed["files"][0][1] += 7
    memo.write_text(json.dumps(changed))
    cli("prepare", recipe)
    assert json.loads(memo.read_text()) == healthy


def test_a_fit_saved_without_a_digest_is_fitted_again_and_says_why(tmp_path, stores, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1)
    cli("prepare", recipe)
    (mark,) = (stores / "fits").glob("*/COMPLETE")
    mark.write_text("")  # what seqmodel wrote before fits were sealed
    done = cli("prepare", recipe)
    assert "not reused (saved by an older seqmodel, without a digest of its files); fitting again" in done.stderr, done.stderr
    assert mark.read_text()  # sealed now
