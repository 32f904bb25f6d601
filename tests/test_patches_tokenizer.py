"""Patch tokenizer: exact round trips, grid positions, colour conversion, seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from seqmodel_tokenizers.patch_ops import channel_stats, to_array
from seqmodel_tokenizers.patches import PatchConfig, PatchTokenizer

from seqmodel.config import build
from seqmodel.errors import UserError
from seqmodel.segments import Segment


def tokenizer(images, **cfg) -> PatchTokenizer:
    tok = PatchTokenizer(build(PatchConfig, cfg, "[tokenizer]"), "image")
    tok.fit(images)
    return tok


def random_image(seed: int, h: int, w: int, colour: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if colour else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


cases = st.tuples(st.integers(1, 4), st.integers(1, 4), st.booleans(), st.integers(0, 2**20))  # grid, patch, colour, seed


@settings(max_examples=40, deadline=None)
@given(cases)
def test_patches_decode_to_the_normalised_image_exactly(case):
    grid, patch, colour, seed = case
    size = grid * patch
    images = [random_image(seed + k, size + k, size + 2 * k, colour) for k in range(3)]
    tok = tokenizer(images, size=size, patch=patch)
    for image in images:
        seg = tok.encode(image)
        expected = (torch.from_numpy(to_array(image, size, tok.channels)) - tok.mean) / tok.std
        assert seg.values.shape == (grid * grid, patch * patch * tok.channels)
        assert torch.equal(tok.decode_array(seg, normalised=True), expected)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**20))
def test_positions_cover_the_grid_once_and_any_token_order_decodes_the_same(grid, seed):
    image = random_image(seed, 2 * grid, 2 * grid, colour=seed % 2 == 0)
    tok = tokenizer([image], patch=2)
    seg = tok.encode(image)
    cells = [tuple(p) for p in seg.positions.tolist()]
    assert sorted(cells) == [(r, c) for r in range(grid) for c in range(grid)]
    assert tok.spec().max_positions == (grid, grid) and tok.spec().position == "2d"
    perm = torch.randperm(len(seg), generator=torch.Generator().manual_seed(seed))
    shuffled = Segment("image", values=seg.values[perm], positions=seg.positions[perm])
    assert torch.equal(tok.decode_array(shuffled, normalised=True), tok.decode_array(seg, normalised=True))


def test_decode_gives_back_the_original_pixels():
    images = [random_image(k, 8, 8, colour=False) for k in range(4)] + [random_image(9, 8, 8, colour=True)]
    tok = tokenizer(images, patch=4)
    assert tok.size == 8 and tok.channels == 3  # automatic: the smallest side, colour if any image is
    for image in images:
        back = tok.decode(tok.encode(image))
        assert back.mode == "RGB" and back.size == (8, 8)
        assert np.array_equal(np.asarray(back), np.asarray(image.convert("RGB")))


def test_fit_statistics_are_the_training_channel_stats():
    images = [random_image(k, 6, 6, colour=True) for k in range(5)]
    tok = tokenizer(images, patch=3)
    mean, std = channel_stats(to_array(im, 6, 3) for im in images)
    assert torch.allclose(tok.mean.flatten(), torch.from_numpy(mean)) and torch.allclose(tok.std.flatten(), torch.from_numpy(std))
    fixed = tokenizer(images, patch=3, mean=[0.5], std=[0.25])
    assert fixed.mean.flatten().tolist() == [0.5] * 3 and fixed.std.flatten().tolist() == [0.25] * 3
    seg = fixed.encode(images[0])
    assert torch.allclose(seg.values[0, :3], (torch.from_numpy(to_array(images[0], 6, 3))[:, 0, 0] - 0.5) / 0.25)


def test_grey_into_colour_and_colour_into_grey_are_converted():
    grey, colour = random_image(1, 16, 12, colour=False), random_image(2, 10, 10, colour=True)
    rgb_tok = tokenizer([colour], size=8, patch=4, channels=3)
    grey_tok = tokenizer([grey], size=8, patch=4, channels=1)
    assert rgb_tok.encode(grey).values.shape == (4, 48) and grey_tok.encode(colour).values.shape == (4, 16)
    back = rgb_tok.decode_array(rgb_tok.encode(grey))
    assert torch.allclose(back[0], back[1], atol=1e-5) and torch.allclose(back[1], back[2], atol=1e-5)
    as_array = np.asarray(colour)  # numpy input, same as the PIL image
    assert torch.equal(grey_tok.encode(as_array).values, grey_tok.encode(colour).values)


def test_augmentation_is_seeded_and_only_in_training():
    images = [random_image(k, 8, 8, colour=False) for k in range(3)]
    tok = tokenizer(images, patch=2, max_shift=2, flip=True)
    plain = tok.encode(images[0]).values
    assert torch.equal(tok.encode(images[0], train=False).values, plain)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [tok.encode(im, train=True, generator=g).values for im in images]

    assert all(torch.equal(a, b) for a, b in zip(draw(3), draw(3)))
    outs = [draw(s)[0] for s in range(8)]
    assert any(not torch.equal(o, plain) for o in outs) and any(not torch.equal(o, outs[0]) for o in outs[1:])


def test_save_and_load_restore_the_state(tmp_path):
    images = [random_image(k, 8, 8, colour=True) for k in range(3)]
    tok = tokenizer(images, patch=2)
    tok.save(tmp_path)
    fresh = PatchTokenizer(build(PatchConfig, {"patch": 2}, "[tokenizer]"), "image")
    fresh.load(tmp_path)
    assert fresh.spec() == tok.spec() and torch.equal(fresh.encode(images[1]).values, tok.encode(images[1]).values)
    (tmp_path / "patches.json").write_text("{")
    with pytest.raises(UserError, match="corrupt"):
        fresh.load(tmp_path)


def test_bad_inputs_give_one_line_errors(tmp_path):
    tok = tokenizer([random_image(0, 8, 8, colour=False)], patch=4)
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    for bad in (text, tmp_path / "missing.png", tmp_path):
        with pytest.raises(UserError) as err:
            tok.encode(str(bad))
        assert "\n" not in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(UserError, match="cannot use"):
        tok.encode(np.zeros((2, 3, 4, 5)))


@pytest.mark.parametrize("cfg, key", [({"size": 10, "patch": 4}, "patch"), ({"channels": 2}, "channels"),
                                      ({"mean": [0.5]}, "std"), ({"resample": "cubic"}, "resample"),
                                      ({"mean": [0.1, 0.2], "std": [1.0, 1.0]}, "mean")])
def test_config_problems_name_the_key(cfg, key):
    with pytest.raises(UserError, match=rf"\[tokenizer\] {key}:"):
        build(PatchConfig, cfg, "[tokenizer]")


def test_cached_images_encode_like_uncached_ones():
    images = [random_image(k, 12, 12, colour=k % 2 == 1) for k in range(4)]
    cached = tokenizer(images, size=8, patch=4, max_shift=1, rotate=15, scale=0.2)
    uncached = tokenizer(images, size=8, patch=4, max_shift=1, rotate=15, scale=0.2, cache_mb=0)
    assert len(cached._cache) == 4 and not uncached._cache
    for seed in range(3):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for im in images:
            assert torch.equal(cached.encode(im, train=True, generator=g1).values,
                               uncached.encode(im, train=True, generator=g2).values)
    assert all(torch.equal(cached.encode(im).values, uncached.encode(im).values) for im in images)


def test_rotation_and_zoom_are_exact_at_zero_and_move_pixels_otherwise():
    from seqmodel_tokenizers.patches import random_affine

    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(random_affine(x, 0.0, 0.0, g), x)
    turned = random_affine(torch.ones(1, 9, 9), 45.0, 0.0, torch.Generator().manual_seed(2))
    assert turned[0, 4, 4] == pytest.approx(1.0) and turned[0, 0, 0] < 0.5  # centre stays, corners fall outside


def test_passes_the_tokenizer_conformance_kit():
    from seqmodel.conformance import run_checks

    lines: list[str] = []
    assert run_checks(PatchTokenizer, modality="image", out=lines.append), "\n".join(lines)
