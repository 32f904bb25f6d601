"""Image sources: stratified seeded digits splits and class-per-folder trees, one-line errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image
from seqmodel_plugins.image_data import DIGIT_NAMES
from seqmodel_plugins.sources.images import DigitsConfig, DigitsSource, ImageFolderConfig, ImageFolderSource

from seqmodel.config import build
from seqmodel.errors import UserError


def digits(**cfg) -> DigitsSource:
    return DigitsSource(build(DigitsConfig, cfg, "[data]"))


def folder_source(**cfg) -> ImageFolderSource:
    return ImageFolderSource(build(ImageFolderConfig, {k: str(v) if hasattr(v, "parent") else v for k, v in cfg.items()}, "[data]"))


def write_tree(root, counts: dict[str, int], colour: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for k in range(n):
            shape = (6, 6, 3) if colour else (6, 6)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name / f"{k}.png")
    return root


def test_digits_split_is_stratified_disjoint_and_seeded():
    src = digits(split_seed=1)
    parts = {s: src.split(s) for s in ("train", "val", "test")}
    sizes = {s: len(p) for s, p in parts.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] >= 0.15 * 1797 and sizes["val"] >= 0.15 * 1797 - 1
    ids = {s: {id(ex["image"]) for ex in p} for s, p in parts.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    total = Counter(ex["label"] for s in parts.values() for ex in s)
    for s, p in parts.items():
        share = Counter(ex["label"] for ex in p)
        for label, n in total.items():
            assert abs(share[label] - n * sizes[s] / 1797) <= 1.0
    assert src.label_names == DIGIT_NAMES and DigitsSource.fields == ("image", "label")
    img = parts["train"][0]["image"]
    assert img.mode == "L" and img.size == (8, 8)

    def pixels(s):
        return [np.asarray(ex["image"]).tobytes() for ex in s.split("test")]

    assert pixels(digits(split_seed=1)) == pixels(src) != pixels(digits(split_seed=2))
    assert digits(split_seed=1).identity() == src.identity() != digits(split_seed=2).identity()


def test_digits_config_checks_fractions():
    with pytest.raises(UserError, match=r"\[data\] test_fraction:"):
        digits(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(UserError, match="unknown split"):
        digits().split("dev")


def test_imagefolder_single_root_is_split_by_seed(tmp_path):
    write_tree(tmp_path / "pets", {"cat": 10, "dog": 10, "owl": 7})
    src = folder_source(path=tmp_path / "pets", split_seed=3)
    sizes = [len(src.split(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 27 and sizes[2] == 5 and src.label_names == ["cat", "dog", "owl"]
    assert {ex["label"] for ex in src.split("train")} == {0, 1, 2}


def test_imagefolder_separate_folders_map_labels_by_name(tmp_path):
    write_tree(tmp_path / "train", {"a": 6, "b": 6, "c": 6})
    write_tree(tmp_path / "val", {"b": 2, "c": 1}, colour=True)  # no "a", colour: still fine
    src = folder_source(train=tmp_path / "train", val=tmp_path / "val", test_fraction=0.2)
    assert Counter(ex["label"] for ex in src.split("val")) == {1: 2, 2: 1}
    assert len(src.split("train")) + len(src.split("test")) == 18 and len(src.split("test")) == 4
    write_tree(tmp_path / "odd", {"zebra": 1})
    with pytest.raises(UserError, match="'zebra' is not one of the training classes"):
        folder_source(train=tmp_path / "train", test=tmp_path / "odd").split("train")


def test_imagefolder_bad_folders_give_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    write_tree(tmp_path / "mixed", {"x": 2})
    (tmp_path / "mixed" / "x" / "readme.txt").write_text("hello")
    (tmp_path / "mixed" / "y").mkdir()
    write_tree(tmp_path / "bad", {"x": 1})
    (tmp_path / "bad" / "x" / "fake.png").write_text("not a png")
    for root, words in [("empty", "no class sub-folders"), ("missing", "does not exist"), ("mixed", "not an image file"),
                        ("bad", "not an image Pillow can read")]:
        with pytest.raises(UserError) as err:
            folder_source(path=tmp_path / root).split("train")
        assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"\[data\] path:"):
        folder_source()
    with pytest.raises(UserError, match=r"\[data\] val:"):
        folder_source(path=tmp_path / "mixed", val=tmp_path / "bad")
