"""The hf source, offline, with the `datasets` local builders (text, json, imagefolder): splits,
the carved validation split (same with and without streaming), field renaming, images, errors,
and a bpe + lm pipeline over it."""

import json

import pytest
from conftest import make_text
from PIL import Image
from seqmodel_plugins.sources.hf import HFConfig, HFSource, in_val

from seqmodel.config import build
from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError
from seqmodel.recipe.schema import parse_recipe


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    (root / "a.txt").write_text(make_text(60, seed=1))
    (root / "b.txt").write_text(make_text(40, seed=2))
    rows = [{"sentence": f"example {i}", "y": i % 3, "extra": i} for i in range(200)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:7]))
    return root


def source(files, **config) -> HFSource:
    return HFSource(HFConfig(cache_dir=str(files / "cache"), **config))


def test_text_builder_one_example_per_line(files):
    src = source(files, name="text", data_files=[str(files / "a.txt"), str(files / "b.txt")])
    lines = (files / "a.txt").read_text().splitlines() + (files / "b.txt").read_text().splitlines()
    train, val = list(src.split("train")), list(src.split("val"))
    assert src.fields == ("text",) and all(set(ex) == {"text"} for ex in train)
    expected_val = [line for i, line in enumerate(lines) if in_val(0, i, 0.1)]
    assert [ex["text"] for ex in val] == expected_val and 0 < len(val) < len(lines) / 4
    assert [ex["text"] for ex in train] == [line for i, line in enumerate(lines) if not in_val(0, i, 0.1)]
    assert list(src.split("test")) == val  # no test split: the validation examples


def test_documents_and_declared_splits(files):
    src = source(files, name="text", data_files={"train": str(files / "a.txt"), "validation": str(files / "b.txt")},
                 options={"sample_by": "document"})
    assert [ex["text"] for ex in src.split("train")] == [(files / "a.txt").read_text()]
    assert [ex["text"] for ex in src.split("val")] == [(files / "b.txt").read_text()]


def test_json_fields_renamed_and_test_split(files):
    src = source(files, name="json", data_files={"train": str(files / "train.jsonl"), "test": str(files / "test.jsonl")},
                 text_field="sentence", label_field="y", seed=5, val_fraction=0.25)
    train, val, test = (src.split(s) for s in ("train", "val", "test"))
    assert src.fields == ("text", "label") and train[0].keys() == {"text", "label"}
    assert len(train) + len(val) == 200 and len(test) == 7 and 25 < len(val) < 75
    assert {ex["text"] for ex in train}.isdisjoint(ex["text"] for ex in val)
    assert train[-1] == list(train)[-1] and train[1:3] == list(train)[1:3]
    assert src.label_names is None


def test_streaming_gives_the_same_examples(files):
    kw = dict(name="json", data_files=str(files / "train.jsonl"), text_field="sentence", label_field="y", seed=3)
    plain, streamed = source(files, **kw), source(files, streaming=True, **kw)
    for split in ("train", "val", "test"):
        lazy = streamed.split(split)
        assert not isinstance(lazy, list) and list(lazy) == list(plain.split(split)) == list(lazy)


def test_carving_depends_on_the_seed(files):
    kw = dict(name="json", data_files=str(files / "train.jsonl"), text_field="sentence")
    a, b = (list(source(files, seed=s, **kw).split("val")) for s in (0, 1))
    assert a != b


def test_image_folder_labels_and_modes(files):
    for label, color in (("cat", (255, 0, 0, 128)), ("dog", (0, 0, 255, 255))):
        (files / "pics" / label).mkdir(parents=True)
        for k in range(3):
            Image.new("RGBA", (4, 5), color).save(files / "pics" / label / f"{k}.png")
    src = source(files, name="imagefolder", data_dir=str(files / "pics"), text_field="", image_field="image",
                 label_field="label", val_fraction=0.3)
    examples = list(src.split("train")) + list(src.split("val"))
    assert src.fields == ("image", "label") and src.label_names == ["cat", "dog"] and len(examples) == 6
    assert {ex["image"].mode for ex in examples} == {"RGB"} and {ex["label"] for ex in examples} == {0, 1}
    red = next(ex["image"] for ex in examples if ex["label"] == 0)
    assert red.getpixel((0, 0)) == (255, 127, 127)  # alpha composited over white


@pytest.mark.parametrize("config,problem", [
    (dict(name="json", data_files="train.jsonl", text_field="nope"), "text_field: 'nope' is not a column"),
    (dict(name="text", data_files="/no/such/file.txt"), "cannot load dataset 'text'"),
    (dict(name="json", data_files="train.jsonl", text_field="sentence", train_split="all"), "train_split: dataset 'json' has no split 'all'"),
])
def test_bad_data_is_a_one_line_user_error(files, config, problem):
    if config.get("data_files", "").endswith(".jsonl"):
        config["data_files"] = str(files / config["data_files"])
    with pytest.raises(UserError) as err:
        list(source(files, **config).split("train"))
    assert problem in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("table,problem", [({}, "name: required"), ({"name": "x", "text_field": ""}, "no field in use"),
                                           ({"name": "x", "val_fraction": 1.0}, "val_fraction"),
                                           ({"name": "x", "options": {"split": "train"}}, "options: split cannot")])
def test_config_values_are_checked(table, problem):
    with pytest.raises(UserError, match=problem):
        build(HFConfig, table, "[data]")


def test_bpe_lm_pipeline_over_hf_text(files):
    raw = {"model": {"layers": 1, "d_model": 16, "heads": 2, "context": 16},
           "data": {"source": "hf", "name": "text", "data_files": [str(files / "a.txt"), str(files / "b.txt")],
                    "options": {"sample_by": "document"}, "val_fraction": 0.5, "seed": 2, "cache_dir": str(files / "cache")},
           "tokenizer": {"kind": "bpe", "vocab_size": 300}, "task": {"kind": "lm"}}
    pipe = Pipeline(parse_recipe(raw, "hf.toml"))
    pipe.fit()
    docs = [ex["text"] for ex in pipe.examples("train")] + [ex["text"] for ex in pipe.examples("val")]
    assert sorted(docs) == sorted((files / n).read_text() for n in ("a.txt", "b.txt"))
    tok, train = pipe.tokenizers["text"], pipe.examples("train")
    assert tok.decode_ids(pipe.task.ids("train")) == "<|endoftext|>".join(ex["text"] for ex in train)
    assert pipe.source.identity()["fingerprints"]["train"]
