"""Image sources: bundled digits, stratified splits, class-per-folder trees, single files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from seqmodel_plugins.image_data import (
    DIGIT_NAMES,
    digits_examples,
    imagefolder_examples,
    load_image,
    stratified_split,
)
from seqmodel_tokenizers.patch_ops import to_array

from seqmodel.errors import UserError


@pytest.fixture(scope="module")
def digits() -> list[dict]:
    return digits_examples()


def test_digits_shape_and_labels(digits):
    assert len(digits) == 1797
    assert all(d["image"].mode == "L" and d["image"].size == (8, 8) for d in digits)
    pixels = np.stack([np.asarray(d["image"]) for d in digits])
    assert pixels.dtype == np.uint8 and pixels.max() == 255 and pixels.min() == 0
    assert sorted({d["label"] for d in digits}) == list(range(10))
    assert len(DIGIT_NAMES) == 10 and DIGIT_NAMES[0] == "zero" and DIGIT_NAMES[9] == "nine"


def test_digits_match_sklearn_scaling(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    for i in (0, 17, 1796):
        expected = [[round(v * 255 / 16) for v in row] for row in raw.images[i]]
        assert np.asarray(digits[i]["image"]).tolist() == expected
        assert digits[i]["label"] == raw.target[i]


def test_digit_png_round_trip_matches_dataset(digits, tmp_path):
    for i in (0, 5, 1000):
        digit = digits[i]["image"]
        folder = tmp_path / "tree" / DIGIT_NAMES[digits[i]["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        digit.save(folder / f"{i}.png")
        loaded = load_image(folder / f"{i}.png")
        assert loaded.mode == "L"
        assert np.array_equal(np.asarray(loaded), np.asarray(digit))
        for channels in (1, 3):
            assert np.array_equal(to_array(loaded, 8, channels), to_array(digit, 8, channels))
    examples, names = imagefolder_examples(tmp_path / "tree")
    assert names == sorted({DIGIT_NAMES[digits[i]["label"]] for i in (0, 5, 1000)})
    loaded_pixels = sorted(np.asarray(e["image"]).tobytes() for e in examples)
    dataset_pixels = sorted(np.asarray(digits[i]["image"]).tobytes() for i in (0, 5, 1000))
    assert loaded_pixels == dataset_pixels


def _check_split(labels, split, val, test):
    labels = np.asarray(labels)
    parts = [split["train"], split["val"], split["test"]]
    assert sorted(i for part in parts for i in part) == list(range(len(labels)))
    fracs = {"train": 1 - val - test, "val": val, "test": test}
    for name, frac in fracs.items():
        for c in np.unique(labels):
            got = np.sum(labels[split[name]] == c)
            assert abs(got - np.sum(labels == c) * frac) < 1 + 1e-9, (name, c)
    assert len(split["test"]) == math.ceil(len(labels) * test - 1e-9)


def test_stratified_split_digits(digits):
    labels = [d["label"] for d in digits]
    splits = [stratified_split(labels, seed) for seed in (0, 1, 2)]
    for split in splits:
        _check_split(labels, split, 0.15, 0.15)
        assert len(split["test"]) / len(labels) >= 0.15
        assert len(split["val"]) / len(labels) >= 0.15 - 1 / len(labels)
    assert stratified_split(labels, 0) == splits[0]
    assert splits[0]["test"] != splits[1]["test"] and splits[1]["test"] != splits[2]["test"]


@pytest.mark.parametrize("val,test", [(0.15, 0.15), (0.1, 0.2), (0.0, 0.3), (0.33, 0.33)])
def test_stratified_split_uneven_classes(val, test):
    rng = np.random.default_rng(0)
    for seed in range(30):
        counts = rng.integers(1, 40, size=rng.integers(1, 8))
        labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
        _check_split(labels, stratified_split(labels.tolist(), seed, val, test), val, test)


def test_stratified_split_string_labels_and_bad_fractions():
    split = stratified_split(["cat", "dog"] * 10, 0, val=0.2, test=0.2)
    assert [len(split[k]) for k in ("train", "val", "test")] == [12, 4, 4]
    with pytest.raises(ValueError):
        stratified_split([0, 1], 0, val=0.5, test=0.5)
    with pytest.raises(ValueError):
        stratified_split([], 0)


def _write_tree(root, classes):
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_imagefolder_examples(tmp_path):
    _write_tree(tmp_path, {"cats": 3, "dogs": 2})
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "cats" / ".DS_Store").write_bytes(b"\0junk")
    examples, names = imagefolder_examples(tmp_path)
    assert names == ["cats", "dogs"]
    assert [e["label"] for e in examples] == [0, 0, 0, 1, 1]
    assert all(e["image"].mode == "RGB" and e["image"].size == (5, 6) for e in examples)


def test_imagefolder_normalises_modes(tmp_path):
    (tmp_path / "a").mkdir()
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.save(tmp_path / "a" / "rgba.png")
    Image.new("P", (4, 4), 3).save(tmp_path / "a" / "palette.gif")
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "a" / "deep.png")
    Image.new("RGB", (4, 4), (10, 200, 30)).save(tmp_path / "a" / "photo.JPG")
    examples, _ = imagefolder_examples(tmp_path)
    by_mode = [(e["image"].mode, np.asarray(e["image"]).max()) for e in examples]
    assert by_mode[0] == ("L", 255)  # deep.png: 16-bit grey scaled to 8 bits
    assert {m for m, _ in by_mode} <= {"L", "RGB"}
    transparent = np.asarray(examples[3]["image"])  # rgba.png composited over white
    assert (transparent == 255).all()


def _one_line_error(call, *, names) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and str(names) in message
    return message


def test_imagefolder_errors(tmp_path):
    _one_line_error(lambda: imagefolder_examples(tmp_path / "nope"), names=tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(lambda: imagefolder_examples(empty), names=empty)
    (empty / "loose.png").write_bytes(b"")
    _one_line_error(lambda: imagefolder_examples(empty), names=empty)
    (tmp_path / "file.png").write_bytes(b"x")
    not_a_folder = tmp_path / "file.png"
    _one_line_error(lambda: imagefolder_examples(not_a_folder), names=not_a_folder)

    root = tmp_path / "tree"
    _write_tree(root, {"a": 1})
    (root / "b").mkdir()
    _one_line_error(lambda: imagefolder_examples(root), names=root / "b")
    Image.new("L", (3, 3)).save(root / "b" / "ok.png")
    (root / "b" / "notes.txt").write_text("hello\nworld")
    _one_line_error(lambda: imagefolder_examples(root), names=root / "b" / "notes.txt")
    (root / "b" / "notes.txt").unlink()
    (root / "b" / "fake.png").write_text("not really a png")
    message = _one_line_error(lambda: imagefolder_examples(root), names=root / "b" / "fake.png")
    assert "not an image" in message


def test_load_image_errors(tmp_path):
    _one_line_error(lambda: load_image(tmp_path / "missing.png"), names=tmp_path / "missing.png")
    _one_line_error(lambda: load_image(tmp_path), names=tmp_path)
    (tmp_path / "text.jpg").write_text("plain text")
    _one_line_error(lambda: load_image(tmp_path / "text.jpg"), names=tmp_path / "text.jpg")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _one_line_error(lambda: load_image(tmp_path / "cut.png"), names=tmp_path / "cut.png")


def _exposures(tmp_path, fmt: str) -> list[np.ndarray]:
    """One 16-bit picture (a ramp) at two exposures, the second 4x the first, saved as `fmt`."""
    ramp = np.tile(np.linspace(0.25, 1.0, 8), (8, 1))
    shots = [np.rint(ramp * top).astype(np.uint16) for top in (250, 1000)]
    for i, pixels in enumerate(shots):
        Image.fromarray(pixels).save(tmp_path / f"shot{i}.{fmt}")
    return shots


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_images_scale_by_their_bit_depth_not_by_their_pixels(tmp_path, fmt):
    shots = _exposures(tmp_path, fmt)
    loaded = [np.asarray(load_image(tmp_path / f"shot{i}.{fmt}")) for i in range(2)]
    for pixels, got in zip(shots, loaded):
        assert got.dtype == np.uint8 and np.array_equal(got, np.rint(pixels.astype(np.float64) * 255 / 65535).astype(np.uint8))
    assert loaded[1].mean() > loaded[0].mean()  # the longer exposure stays the brighter one


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_the_patches_arrays_of_16_bit_images_keep_their_brightness_order(mode):
    ramp = np.tile(np.linspace(0.25, 1.0, 8), (8, 1))
    arrays = []
    for top in (250, 1000):
        pixels = np.rint(ramp * top).astype(np.uint16 if mode == "I;16" else np.int32)
        image = Image.fromarray(pixels)
        assert image.mode == mode
        arrays.append(to_array(image, 8, 1))
        np.testing.assert_allclose(arrays[-1][0], pixels / 65535, rtol=1e-6)
    assert arrays[1].mean() > arrays[0].mean()
