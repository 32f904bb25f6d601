"""Image folders decode per example: the identity (and the checks of every file) come from one
pass over a tree, kept per state of its files; a classification task holds file names, not
pictures, and draws the same batches as from eagerly loaded images."""

import numpy as np
import pytest
from PIL import Image
from seqmodel_plugins import image_data
from seqmodel_plugins.sources import images
from seqmodel_plugins.sources.images import ImageFolderConfig, ImageFolderSource, _digest, _split

from seqmodel.config import build
from seqmodel.task import Slice
from seqmodel.training.train import fingerprint


def write_tree(root, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "owl"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


@pytest.fixture
def counted(monkeypatch):
    """How many images were decoded."""
    calls = []
    real = image_data.load_image

    def load(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(images, "load_image", load)
    return calls


def source(root) -> ImageFolderSource:
    return ImageFolderSource(build(ImageFolderConfig, {"path": str(root), "split_seed": 1}, "[data]"))


def test_identity_equals_the_eager_digest_and_is_kept(tmp_path, monkeypatch, counted):
    monkeypatch.setenv("SEQMODEL_STORES", str(tmp_path / "stores"))
    write_tree(tmp_path / "pets")
    examples, _ = image_data.imagefolder_examples(tmp_path / "pets")  # the images as they used to be loaded
    eager = {s: _digest(part) for s, part in _split(examples, 1, 0.15, 0.15).items()}
    first = source(tmp_path / "pets")
    assert first.identity()["sha256"] == eager and len(counted) == 18  # each image read once, to check and hash it
    counted.clear()
    again = source(tmp_path / "pets")
    assert again.identity() == first.identity() and [len(again.split(s)) for s in ("train", "val", "test")] == [12, 3, 3]
    assert counted == []  # nothing decoded to start a second run on the same files
    Image.new("RGB", (8, 8), "white").save(tmp_path / "pets" / "owl" / "0.png")
    assert source(tmp_path / "pets").identity() != first.identity()  # a changed file is new data


def test_classify_holds_file_names_and_draws_the_same_batches(tmp_path, monkeypatch, counted):
    from seqmodel.data.pipeline import Pipeline
    from seqmodel.recipe.schema import parse_recipe

    monkeypatch.setenv("SEQMODEL_STORES", str(tmp_path / "stores"))
    write_tree(tmp_path / "pets", per_class=10)
    recipe = {"model": {"arch": "encoder", "layers": 1, "d_model": 16, "heads": 2, "context": 16, "mask": "full"},
              "data": {"source": "imagefolder", "path": str(tmp_path / "pets")},
              "tokenizer": {"kind": "patches", "field": "image", "modality": "image", "size": 8, "patch": 2, "max_shift": 1},
              "task": {"kind": "classify"}, "train": {"batch_size": 4}}
    pipe = Pipeline(parse_recipe(recipe, "r.toml"))
    pipe.fit()
    counted.clear()
    lazy = pipe.task.batches("train", True)
    assert counted == []  # the split's items are file names until a batch reads them
    eager = Pipeline(parse_recipe(recipe, "r.toml"))
    eager.fit()
    eager_task = eager.task
    loaded = {id(ex): {"image": ex["image"], "label": ex["label"]} for s in ("train", "val", "test") for ex in eager.examples(s)}
    eager._examples = {s: [loaded[id(ex)] for ex in eager.examples(s)] for s in ("train", "val", "test")}
    eager_task.setup(eager.context())
    reference = eager_task.batches("train", True)
    for step in range(6):
        where = Slice(step, 0, 0, 4, 4)
        assert fingerprint(lazy.batch(where)) == fingerprint(reference.batch(where))
    assert len(counted) >= 6 * 4
