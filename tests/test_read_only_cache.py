"""A read-only cache that holds every store a command needs: opening a complete store (a fitted
tokenizer, a split's ids, a scan of text files) needs no write access; preparing a new one is a
one-line error naming the folder."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import tiny_char_recipe
from inprocess import errors, seqmodel


@pytest.fixture
def trained(tmp_path, corpus, monkeypatch):
    """A finished run whose prepared data lives in its own cache folder."""
    monkeypatch.setenv("SEQMODEL_STORES", str(tmp_path / "stores"))
    recipe = tiny_char_recipe(tmp_path, corpus, steps=2, eval_every=2)
    seqmodel("run", recipe, "--out", tmp_path / "run", "--no-progress", "--set", "sample.num_samples=0")
    return recipe, tmp_path / "run", tmp_path / "stores"


def read_only(folder: Path):
    """Make `folder` read-only: a read-only bind mount as root (root ignores modes), else modes."""
    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        return lambda: [p.chmod(p.stat().st_mode | 0o200) for p in [folder, *folder.rglob("*")]]
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False).returncode:
        pytest.skip("root, but cannot bind-mount here")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
    return lambda: subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.parametrize("locks", ["kept", "removed"])
def test_eval_reads_a_read_only_cache_that_holds_its_stores(trained, locks):
    recipe, run, stores = trained
    before = json.loads(seqmodel("eval", run, "--json").stdout)
    if locks == "removed":  # a cache copied without its lock files
        for lock in stores.rglob("*.lock"):
            lock.unlink()
    undo = read_only(stores)
    try:
        assert json.loads(seqmodel("eval", run, "--json").stdout) == before
        assert ": ok (" in seqmodel("check", recipe).stdout
    finally:
        undo()


def test_a_store_a_read_only_cache_lacks_is_one_line_naming_the_folder(trained):
    recipe, _, stores = trained
    undo = read_only(stores)
    try:
        done = seqmodel("check", recipe, "--set", "tokenizer.include='~'", check=False)
    finally:
        undo()
    (line,) = errors(done)
    assert done.returncode == 2 and f"{stores}/fits: cannot write the prepared data" in line
