"""Patch operations: exact patchify round trips, positions, colour conversion, shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from seqmodel_tokenizers.patch_ops import (
    channel_stats,
    grid_positions,
    patchify,
    random_shift,
    to_array,
    unpatchify,
)

shapes = st.tuples(  # grid_h, grid_w, patch, channels, seed
    st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**30)
)


def _image(grid_h, grid_w, patch, channels, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(channels, grid_h * patch, grid_w * patch, generator=g)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_unpatchify_inverts_patchify(shape):
    grid_h, grid_w, patch, channels, seed = shape
    x = _image(grid_h, grid_w, patch, channels, seed)
    patches = patchify(x, patch)
    assert patches.shape == (grid_h * grid_w, patch * patch * channels)
    assert torch.equal(unpatchify(patches, patch, grid_h, grid_w, channels), x)
    batch = torch.stack([x, -x])
    assert torch.equal(unpatchify(patchify(batch, patch), patch, grid_h, grid_w, channels), batch)


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_patch_content_and_positions_match_naive_loop(shape):
    grid_h, grid_w, patch, channels, seed = shape
    x = _image(grid_h, grid_w, patch, channels, seed)
    patches, positions = patchify(x, patch), grid_positions(grid_h, grid_w)
    assert positions.dtype == torch.long and positions.shape == (grid_h * grid_w, 2)
    cells = {tuple(p) for p in positions.tolist()}
    assert cells == {(r, c) for r in range(grid_h) for c in range(grid_w)}
    assert len(cells) == len(positions)
    for n, (r, c) in enumerate(positions.tolist()):
        block = x[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]  # (C, p, p)
        assert torch.equal(patches[n], block.permute(1, 2, 0).reshape(-1))


def test_patchify_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 8, 8), 3)
    with pytest.raises(ValueError):
        unpatchify(torch.zeros(4, 12), 2, 2, 2, channels=1)


def test_to_array_grey_to_rgb_and_back():
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    rgb = to_array(grey, 8, 3)
    assert rgb.shape == (3, 8, 8) and rgb.dtype == np.float32
    assert np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[1], rgb[2])
    assert np.array_equal(rgb[0], np.asarray(grey) / np.float32(255))
    assert np.allclose(to_array(grey.convert("RGB"), 8, 1), to_array(grey, 8, 1), atol=1e-6)


def test_to_array_rgb_to_grey_matches_pillow():
    rng = np.random.default_rng(0)
    colour = Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    ours = to_array(colour, 10, 1)[0]
    pillow = np.asarray(colour.convert("L")) / 255.0
    assert np.abs(ours - pillow).max() <= 1 / 255 + 1e-6


def test_to_array_arrays_and_modes():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    from_uint8 = to_array(pixels, 8, 3)
    assert np.allclose(from_uint8, to_array(pixels / 255.0, 8, 3), atol=1e-6)
    assert np.array_equal(from_uint8, to_array(Image.fromarray(pixels), 8, 3))
    transparent = np.zeros((4, 4, 4), dtype=np.uint8)
    assert (to_array(transparent, 4, 1) == 1.0).all()  # alpha 0 over white
    palette = Image.fromarray(pixels).convert("P")
    assert to_array(palette, 8, 1).shape == (1, 8, 8)
    with pytest.raises(ValueError):
        to_array(pixels, 8, 2)
    with pytest.raises(ValueError):
        to_array(np.zeros((2, 2, 2, 2)), 2, 1)


def test_to_array_center_crop_and_resize():
    wide = np.zeros((8, 12), dtype=np.uint8)
    wide[:, 2:10] = 255
    assert (to_array(wide, 8, 1) == 1.0).all()
    tall = np.zeros((12, 8), dtype=np.uint8)
    tall[2:10] = 255
    assert (to_array(tall, 8, 1) == 1.0).all()
    rng = np.random.default_rng(2)
    for size in (4, 16, 32):
        out = to_array(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), size, 3)
        assert out.shape == (3, size, size) and out.min() >= 0 and out.max() <= 1
    flat = to_array(np.full((5, 5), 0.25, dtype=np.float32), 16, 1)
    assert np.allclose(flat, 0.25, atol=1e-5)


def test_channel_stats_matches_numpy():
    rng = np.random.default_rng(3)
    arrays = [rng.random((3, h, h), dtype=np.float32) for h in (4, 8, 5)]
    mean, std = channel_stats(arrays)
    pixels = np.concatenate([a.reshape(3, -1) for a in arrays], axis=1)
    assert mean.shape == std.shape == (3,)
    assert np.allclose(mean, pixels.mean(1), atol=1e-6)
    assert np.allclose(std, pixels.std(1), atol=1e-6)
    with pytest.raises(ValueError):
        channel_stats([])
    with pytest.raises(ValueError):
        channel_stats([np.zeros((1, 2, 2)), np.zeros((3, 2, 2))])


def _shifted(x, dy, dx):
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_random_shift_deterministic_and_a_translation():
    x = torch.rand(2, 7, 9) + 0.5
    outs = [random_shift(x, 2, torch.Generator().manual_seed(s)) for s in range(12)]
    again = [random_shift(x, 2, torch.Generator().manual_seed(s)) for s in range(12)]
    assert all(torch.equal(a, b) for a, b in zip(outs, again))
    assert all(o.shape == x.shape for o in outs)
    offsets = set()
    for out in outs:
        offsets_2 = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
        matches = [(dy, dx) for dy, dx in offsets_2 if torch.equal(out, _shifted(x, dy, dx))]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)


def test_random_shift_edge_padding_has_no_zeros():
    x = torch.rand(1, 2, 6, 6) + 0.5
    for seed in range(10):
        out = random_shift(x, 3, torch.Generator().manual_seed(seed), pad="edge")
        assert out.shape == x.shape and (out > 0).all()
    with pytest.raises(ValueError):
        random_shift(x, -1, torch.Generator())
