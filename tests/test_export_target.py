"""`seqmodel export --out`: never over files it did not write, never inside a run's checkpoints,
written whole or not at all (a failed write leaves the target as it was)."""

import json
import os
from pathlib import Path

import pytest
from conftest import cli, tiny_char_recipe
from fuzzing import full_disk

pytest.importorskip("transformers")

HF_FILES = ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus) -> Path:
    tmp = tmp_path_factory.mktemp("export_target")
    cli("run", tiny_char_recipe(tmp, corpus, steps=2, eval_every=2, eval_batches=1), "--out", tmp / "run", "--no-progress")
    return tmp / "run"


def one_line_error(done) -> str:
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    return done.stderr


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt, name", [("hf", "config.json"), ("hf", "model.safetensors"), ("hf", "tokenizer.json"),
                                       ("onnx", "model.onnx"), ("onnx", "signature.json")])
def test_a_user_file_in_the_target_is_never_overwritten(tmp_path, run_dir, fmt, name):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / name).write_text("the user's own file")
    err = one_line_error(cli("export", run_dir, "--format", fmt, "--out", tmp_path / "mine", check=False))
    assert "never overwrites" in err
    assert tree(tmp_path / "mine") == {name: b"the user's own file"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left beside it


def test_a_run_checkpoint_is_never_an_export_target(tmp_path, run_dir):
    step = max((run_dir / "checkpoints").glob("step_*"))
    before = tree(run_dir)
    for out in (step, run_dir / "checkpoints" / "step_new", run_dir / "checkpoints"):
        err = one_line_error(cli("export", run_dir, "--format", "hf", "--out", out, check=False))
        assert "inside the checkpoints of run" in err
    assert tree(run_dir) == before
    cli("sample", run_dir, "--max-new-tokens", "4")


def test_a_file_as_out_is_refused(tmp_path, run_dir):
    (tmp_path / "file").write_text("x")
    assert "a file, not a folder" in one_line_error(cli("export", run_dir, "--format", "hf", "--out", tmp_path / "file", check=False))
    assert (tmp_path / "file").read_text() == "x"


def test_an_empty_folder_or_an_earlier_export_is_replaced_whole(tmp_path, run_dir):
    (tmp_path / "out").mkdir()
    cli("export", run_dir, "--format", "hf", "--out", tmp_path / "out")
    assert set(HF_FILES) <= {p.name for p in (tmp_path / "out").iterdir()}
    cli("export", run_dir, "--format", "onnx", "--out", tmp_path / "out")  # an earlier export: replaced as a whole
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "seqmodel.json", "signature.json"]
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert "'notes.txt'" in one_line_error(cli("export", run_dir, "--format", "hf", "--out", tmp_path / "out", check=False))
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine" and (tmp_path / "out" / "model.onnx").is_file()


def test_an_export_written_before_seqmodel_json_listed_its_files_is_replaced(tmp_path, run_dir):
    """The default RUN/export/hf of an earlier seqmodel version: its seqmodel.json has no file list."""
    out = tmp_path / "old"
    out.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (out / name).write_text("old")
    (out / "seqmodel.json").write_text(json.dumps({"run": str(run_dir), "format": "hf"}))
    cli("export", run_dir, "--format", "hf", "--out", out)
    assert (out / "config.json").read_text() != "old" and "files" in json.loads((out / "seqmodel.json").read_text())


def test_a_failed_write_is_one_line_and_leaves_the_target_as_it_was(tmp_path, run_dir):
    with full_disk(20_000):  # the weights file is larger
        err = one_line_error(cli("export", run_dir, "--format", "hf", "--out", tmp_path / "new", check=False))
    assert "cannot write the export" in err and "nothing half-written" in err
    assert list(tmp_path.iterdir()) == []
    cli("export", run_dir, "--format", "hf", "--out", tmp_path / "old")
    before = tree(tmp_path / "old")
    with full_disk(20_000):
        one_line_error(cli("export", run_dir, "--format", "hf", "--out", tmp_path / "old", check=False))
    assert tree(tmp_path / "old") == before and [p.name for p in tmp_path.iterdir()] == ["old"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_is_one_line(tmp_path, run_dir):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        err = one_line_error(cli("export", run_dir, "--format", "hf", "--out", tmp_path / "ro" / "x", check=False))
        assert "cannot write the export" in err
    finally:
        (tmp_path / "ro").chmod(0o755)
