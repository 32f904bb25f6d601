"""A user's own data: one path convention (relative paths read against the recipe file's folder,
recorded absolute; a single string where a list is expected), the audiofolder source (its mel
features against the file read independently), its one-line errors, relative file names in hf
data files, and every example recipe under recipes/examples passing `seqmodel check`."""

import importlib.util
import json
import shutil
import wave
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch
from inprocess import errors, seqmodel
from seqmodel_plugins.sources.audio import AudioFolderConfig, AudioFolderSource
from seqmodel_plugins.sources.text import TextConfig
from seqmodel_tokenizers.mel import MelTokenizer, MelTokenizerConfig, slice_frames
from seqmodel_tokenizers.mel_features import log_mel

from seqmodel import registry
from seqmodel.config import build
from seqmodel.errors import UserError
from seqmodel.recipe.schema import load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "recipes" / "examples"
TINY = ["model.layers=1", "model.d_model=32", "train.batch_size=4", "train.eval_batches=1"]


@pytest.fixture(autouse=True)
def audiofolder_registered(monkeypatch):
    """`audiofolder` is registered in pyproject.toml; an environment installed before it was
    added sees it only after a reinstall, so tests add the same entry point when it is missing."""
    found = registry._entry_points

    def with_audiofolder(kind):
        eps = found(kind)
        if kind == "source" and "audiofolder" not in eps:
            eps["audiofolder"] = EntryPoint("audiofolder", "seqmodel_plugins.sources.audio:AudioFolderSource",
                                            "seqmodel.sources")
        return eps

    monkeypatch.setattr(registry, "_entry_points", with_audiofolder)


def text_recipe(folder: Path, paths: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "r.toml"
    recipe.write_text(f"""
[model]
layers = 1
d_model = 32
heads = 2
context = 16
[train]
steps = 2
batch_size = 2
eval_every = 2
eval_batches = 1
checkpoint_every = 2
[data]
source = "text"
paths = {json.dumps(paths)}
[tokenizer]
kind = "char"
[task]
kind = "lm"
[sample]
max_new_tokens = 8
""")
    return recipe


def test_a_single_string_is_a_one_element_list():
    assert build(TextConfig, {"paths": "a.txt"}, "[data]").paths == ["a.txt"]
    assert build(TextConfig, {"paths": ["a.txt", "b.txt"]}, "[data]").paths == ["a.txt", "b.txt"]
    with pytest.raises(UserError, match="paths: expected"):
        build(TextConfig, {"paths": 3}, "[data]")
    raw = {"data": {"source": "spoken_digits"}, "tokenizers": {"audio": {"kind": "mel", "field": "audio"},
                                                              "text": {"kind": "char", "field": "text"}},
           "task": {"kind": "seq2seq", "inputs": "audio", "target": "text"}}
    assert parse_recipe(raw).task.config.inputs == ["audio"]


def test_relative_paths_follow_the_recipe_file_and_are_recorded_absolute(tmp_path, monkeypatch, corpus):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copy(corpus, project / "data" / "book.txt")
    recipe = text_recipe(project / "recipes", "../data/*.txt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    want = [str(project / "data" / "*.txt")]
    assert load_recipe(recipe).data.config.paths == want
    seqmodel("run", recipe, "--out", tmp_path / "run", "--no-progress")
    recorded = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recorded["data"]["paths"] == want
    assert json.dumps(want[0]) in (tmp_path / "run" / "recipe.toml").read_text()
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    done = seqmodel("eval", tmp_path / "run", "--json")
    assert json.loads(done.stdout)["loss"] > 0


def test_set_values_and_dict_recipes_are_read_against_the_current_directory(tmp_path, monkeypatch):
    recipe = text_recipe(tmp_path / "recipes", "x.txt")
    monkeypatch.chdir(tmp_path)
    assert load_recipe(recipe, ["data.paths=mine/*.txt"]).data.config.paths == [str(tmp_path / "mine" / "*.txt")]
    raw = {"data": {"source": "text", "paths": ["a.txt", "/abs/b.txt"]}, "tokenizer": {"kind": "char"}, "task": {"kind": "lm"}}
    assert parse_recipe(raw).data.config.paths == [str(tmp_path / "a.txt"), "/abs/b.txt"]


def test_hub_data_files_stay_as_given_and_local_ones_follow_the_recipe(tmp_path):
    base = {"tokenizer": {"kind": "char"}, "task": {"kind": "lm"}}
    hub = parse_recipe({"data": {"source": "hf", "name": "user/set", "data_files": "en/*.json", "data_dir": "en"}} | base,
                       base=tmp_path)
    assert (hub.data.config.data_files, hub.data.config.data_dir) == ("en/*.json", "en")
    local = parse_recipe({"data": {"source": "hf", "name": "json", "data_files": {"train": ["a.jsonl"]}}} | base,
                         base=tmp_path)
    assert local.data.config.data_files == {"train": [str(tmp_path / "a.jsonl")]}


def write_wav(path: Path, rate: int, seconds: float, freq: float) -> np.ndarray:
    """A 16-bit mono tone written with the stdlib; returns the samples as floats in [-1, 1)."""
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.4 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return pcm.astype(np.float32) / 32768


def audio_folder(root: Path, n: int = 6, rate: int = 8000) -> dict[str, np.ndarray]:
    samples = {}
    for i in range(n):
        samples[f"clips/{i}.wav"] = write_wav(root / f"clips/{i}.wav", rate, 0.2 + 0.05 * i, 300 + 100 * i)
    (root / "metadata.csv").write_text("file_name,text\n" + "".join(f"clips/{i}.wav,{i}{i}\n" for i in range(n)))
    return samples


def test_audiofolder_reads_metadata_and_its_features_match_the_file(tmp_path):
    samples = audio_folder(tmp_path / "audio")
    src = AudioFolderSource(build(AudioFolderConfig, {"path": str(tmp_path / "audio"), "val_fraction": 0.2,
                                                      "test_fraction": 0.2}, "[data]"))
    splits = {s: src.split(s) for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [4, 1, 1]
    every = sorted(ex["audio"] for v in splits.values() for ex in v)
    assert every == sorted(str(tmp_path / "audio" / k) for k in samples)
    tok = MelTokenizer(MelTokenizerConfig(frames=4), "audio")
    for ex in splits["train"]:
        name = str(Path(ex["audio"]).relative_to(tmp_path / "audio"))
        assert ex["text"] == name[6] * 2
        want = slice_frames(log_mel(torch.from_numpy(samples[name]), 8000, tok.mel_config), 4)
        assert torch.allclose(tok.encode(ex["audio"]).values, want, atol=1e-5)
    assert src.identity() == AudioFolderSource(src.config).identity()


def test_audiofolder_reads_a_transcript_beside_each_file(tmp_path):
    for i in range(3):
        write_wav(tmp_path / f"{i}.wav", 16000, 0.1, 440)
        (tmp_path / f"{i}.txt").write_text(f" hello {i}\n")
    src = AudioFolderSource(AudioFolderConfig(train=str(tmp_path), val=str(tmp_path), test=str(tmp_path)))
    assert [ex["text"] for ex in src.split("train")] == ["hello 0", "hello 1", "hello 2"]


@pytest.mark.parametrize("damage, message", [
    ("missing_file", r"metadata.csv: line 3: file_name 'clips/1.wav' names no file in .*audio$"),
    ("unreadable", r"clips/2.wav: not readable audio \(.*\); expected a WAV, FLAC or OGG file$"),
    ("no_column", r"metadata.csv: no 'text' column \(it has: file_name, words\); expected file_name,text \(set text_column\)$"),
    ("no_folder", r"audio folder '.*nowhere' does not exist$"),
])
def test_bad_audio_folders_are_one_line_errors(tmp_path, damage, message):
    root = tmp_path / "audio"
    audio_folder(root, n=3)
    if damage == "missing_file":
        (root / "clips" / "1.wav").unlink()
    elif damage == "unreadable":
        (root / "clips" / "2.wav").write_bytes(b"not a wave file at all")
    elif damage == "no_column":
        (root / "metadata.csv").write_text("file_name,words\nclips/0.wav,a\n")
    path = str(tmp_path / "nowhere") if damage == "no_folder" else str(root)
    with pytest.raises(UserError, match=message) as err:
        AudioFolderSource(AudioFolderConfig(path=path)).split("train")
    assert "\n" not in str(err.value)


def test_a_missing_transcript_is_named_by_check(tmp_path):
    write_wav(tmp_path / "audio" / "a.wav", 16000, 0.1, 440)
    recipe = tmp_path / "r.toml"
    recipe.write_text("""
[data]
source = "audiofolder"
path = "audio"
[tokenizers.audio]
kind = "mel"
field = "audio"
[tokenizers.text]
kind = "char"
field = "text"
[task]
kind = "seq2seq"
inputs = "audio"
target = "text"
""")
    done = seqmodel("check", recipe, check=False)
    (line,) = errors(done)
    assert done.returncode == 2 and line.startswith("error: ") and line.endswith(
        f"{tmp_path / 'audio' / 'a.wav'}: no transcript (expected a.txt beside it, or a metadata.csv "
        f"with file_name,text in {tmp_path / 'audio'})")


def test_hf_file_names_in_a_csv_are_read_against_its_folder(tmp_path):
    from seqmodel_plugins.sources.hf import HFConfig, HFSource

    table = tmp_path / "table"
    write_wav(table / "clips" / "a.wav", 16000, 0.1, 440)
    (table / "rows.csv").write_text("path,text\nclips/a.wav,hi\nclips/a.wav,ho\n")
    raw = {"data": {"source": "hf", "name": "csv", "data_files": "table/rows.csv", "audio_field": "path"},
           "tokenizer": {"kind": "char"}, "task": {"kind": "lm"}}
    config = parse_recipe(raw, base=tmp_path).data.config
    assert isinstance(config, HFConfig) and config.data_files == str(table / "rows.csv")
    example = HFSource(config).split("train")[0]
    assert example["audio"] == str(table / "clips" / "a.wav") and Path(example["audio"]).is_file()


def make_data_module():
    spec = importlib.util.spec_from_file_location("make_data", EXAMPLES / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """The example recipes copied to a fresh folder with their data generated beside them."""
    folder = tmp_path_factory.mktemp("examples")
    make = make_data_module()
    for write in (make.write_text, make.write_images, make.write_table, make.write_episodes):
        write(folder / "data")
    make.write_audio(folder / "data", count=30)  # each file costs its log-mel features at check
    for recipe in EXAMPLES.glob("*.toml"):
        shutil.copy(recipe, folder)
    return folder


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.toml")))
def test_every_example_recipe_passes_check(examples, name, monkeypatch):
    monkeypatch.chdir(examples.parent)  # not the recipe's folder: its paths must follow the recipe
    done = seqmodel("check", examples / f"{name}.toml", *[a for kv in TINY for a in ("--set", kv)])
    assert ": ok (" in done.stdout + done.stderr


def test_the_example_recipes_open_with_their_command():
    for recipe in EXAMPLES.glob("*.toml"):
        first = recipe.read_text().splitlines()[0]
        assert first == f"# seqmodel run recipes/examples/{recipe.name}", recipe


def table_recipe(folder: Path, labels: list) -> Path:
    """A tiny classifier over a CSV of 40 reviews with the given labels (written by the csv module)."""
    import csv

    with open(folder / "reviews.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        out.writerows([("a good film" if i % 2 else "a dull film", y) for i, y in enumerate(labels)])
    recipe = folder / "table.toml"
    recipe.write_text('[model]\narch = "encoder"\nlayers = 1\nd_model = 16\nheads = 2\nmask = "full"\ncontext = 16\n'
                      '[train]\nsteps = 2\nbatch_size = 4\nthreads = 1\n[data]\nsource = "hf"\nname = "csv"\n'
                      'data_files = "reviews.csv"\nlabel_field = "label"\nval_fraction = 0.2\n[tokenizer]\nkind = "char"\n[task]\nkind = "classify"\n')
    return recipe


@pytest.mark.parametrize("labels, message", [
    (["" if i % 5 == 0 else i % 2 for i in range(40)], r"\[task\] label_field: \d+ of the \d+ training examples have an "
     r"empty 'label' \(the first is example \d+\); give every example a class$"),
    ([""] * 40, r"\[task\] label_field: (\d+) of the \1 training examples have an empty 'label'"),
    ([10**12 if i == 3 else i % 2 for i in range(40)], r"\[task\] label_field: label 1000000000000 in 'label' would "
     r"make 1,000,000,000,001 classes \(labels are class indices 0, 1, 2 \.\.\., at most 999,999\); renumber the "
     r"classes, or give the labels as text \(class names\)$"),
], ids=["some empty", "all empty", "10**12"])
def test_csv_labels_that_are_not_classes_are_one_line_errors(tmp_path, labels, message):
    import re
    import time

    start = time.perf_counter()
    (line,) = errors(seqmodel("check", table_recipe(tmp_path, labels), check=False))
    assert re.search(message, line), line
    assert time.perf_counter() - start < 60


def test_csv_labels_as_class_indices_or_names_pass_check(tmp_path):
    assert ": ok (" in seqmodel("check", table_recipe(tmp_path, [i % 3 for i in range(40)])).stdout
    assert ": ok (" in seqmodel("check", table_recipe(tmp_path, ["pos" if i % 2 else "neg" for i in range(40)])).stdout


def test_a_metadata_csv_and_transcripts_with_a_byte_order_mark_read_as_without(tmp_path):
    audio_folder(tmp_path / "plain", n=3)
    audio_folder(tmp_path / "bom", n=3)
    text = (tmp_path / "bom" / "metadata.csv").read_text()
    (tmp_path / "bom" / "metadata.csv").write_text(text, encoding="utf-8-sig")  # what spreadsheet programs export
    assert (tmp_path / "bom" / "metadata.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    split = {name: AudioFolderSource(AudioFolderConfig(**dict.fromkeys(("train", "val", "test"), str(tmp_path / name)))).split("train")
             for name in ("plain", "bom")}
    assert [ex["text"] for ex in split["bom"]] == [ex["text"] for ex in split["plain"]] == ["00", "11", "22"]
    write_wav(tmp_path / "beside" / "a.wav", 16000, 0.1, 440)
    (tmp_path / "beside" / "a.txt").write_text("hello\n", encoding="utf-8-sig")
    assert AudioFolderSource(AudioFolderConfig(**dict.fromkeys(("train", "val", "test"), str(tmp_path / "beside")))).split("train")[0]["text"] == "hello"


def test_a_fifo_in_an_image_folder_is_one_line_not_a_hang(tmp_path):
    import os
    import signal

    from PIL import Image
    from seqmodel_plugins.image_data import imagefolder_files, load_image

    for name in ("a", "b"):
        (tmp_path / "shapes" / name).mkdir(parents=True)
        Image.new("L", (4, 4), 9).save(tmp_path / "shapes" / name / "0.png")
    os.mkfifo(tmp_path / "shapes" / "b" / "1.png")

    def stop(signum, frame):
        raise TimeoutError("still running after 30 s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(30)
    try:
        with pytest.raises(UserError, match=r"b/1.png is not a regular file \(a FIFO\); class folder "):
            imagefolder_files(tmp_path / "shapes")
        with pytest.raises(UserError, match=r"1.png is not a regular file \(a FIFO\), expected an "
                                            r"image file$"):
            load_image(tmp_path / "shapes" / "b" / "1.png")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
