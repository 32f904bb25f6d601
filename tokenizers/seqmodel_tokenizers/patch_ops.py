"""Image array and patch operations shared by the patch tokenizers.

`to_array` turns a PIL image or numpy array into a float (C, H, W) array in [0, 1] of a fixed
square size; `patchify` cuts it into flattened non-overlapping patches in row-major grid order
(ViT, Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), `grid_positions` gives each
patch's (row, column) and `unpatchify` is the exact inverse. `random_shift` is the pad-and-crop
translation augmentation used for small images.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from seqmodel_plugins.image_data import full_scale

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's "L"


def to_array(
    image: Image.Image | np.ndarray,
    size: int,
    channels: int,
    *,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> np.ndarray:
    """Convert an image to a float32 (channels, size, size) array with values in [0, 1].

    Greyscale and colour convert both ways (grey is repeated to RGB; RGB becomes ITU-R 601-2
    luma); alpha is composited over white. A non-square image is centre-cropped to a square
    before resizing; an image already ``size`` x ``size`` is not resampled.

    Args:
        image: a PIL image of any mode, or an array (H, W) or (H, W, C) with C in 1-4, either
            integer (scaled by the dtype's maximum, e.g. uint8 / 255) or float in [0, 1].
        size: output height and width.
        channels: 1 (greyscale) or 3 (RGB).
        resample: Pillow filter for resizing (bicubic default; bilinear also fine).

    Returns:
        Array of shape (channels, size, size), dtype float32, values in [0, 1].

    Raises:
        ValueError: unsupported channels, size or array shape.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    x = _as_float_hwc(image)  # (H, W, C) in [0, 1]
    x = _composite_alpha(x)  # (H, W, 1 or 3)
    if channels == 3 and x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    elif channels == 1 and x.shape[2] == 3:
        x = (x @ _LUMA)[:, :, None]
    x = _center_square(x)
    if x.shape[0] != size:
        planes = [Image.fromarray(np.ascontiguousarray(x[:, :, c])) for c in range(channels)]
        x = np.stack([np.asarray(p.resize((size, size), resample)) for p in planes], axis=2)
    return np.clip(x.transpose(2, 0, 1), 0.0, 1.0).astype(np.float32)


def _as_float_hwc(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        if image.mode.startswith("I") or image.mode == "F":
            return np.asarray(image, dtype=np.float32)[:, :, None] / full_scale(image)
        if image.mode == "1":
            image = image.convert("L")
        elif image.mode not in ("L", "LA", "RGB", "RGBA"):
            alpha = image.mode in ("PA", "La", "RGBa") or "transparency" in image.info
            image = image.convert("RGBA" if alpha else "RGB")
        image = np.asarray(image)
    x = np.asarray(image)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[2] not in (1, 2, 3, 4) or 0 in x.shape:
        raise ValueError(f"expected an image array (H, W) or (H, W, C<=4), got shape {x.shape}")
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    return x.astype(np.float32)


def _composite_alpha(x: np.ndarray) -> np.ndarray:
    if x.shape[2] in (2, 4):
        alpha = x[:, :, -1:]
        return x[:, :, :-1] * alpha + (1.0 - alpha)
    return x


def _center_square(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return x[top : top + side, left : left + side]


def channel_stats(arrays: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation over all pixels of all arrays.

    Args:
        arrays: (C, H, W) arrays, e.g. from `to_array`; sizes may differ, C may not.

    Returns:
        ``(mean, std)``, each float32 of shape (C,).

    Raises:
        ValueError: no arrays, or arrays with different channel counts.
    """
    total = total_sq = None
    count = 0
    for a in arrays:
        flat = np.asarray(a, dtype=np.float64).reshape(len(a), -1)  # (C, H*W)
        if total is None:
            total, total_sq = np.zeros(len(flat)), np.zeros(len(flat))
        if len(flat) != len(total):
            raise ValueError(f"channel_stats: arrays have {len(total)} and {len(flat)} channels")
        total += flat.sum(1)
        total_sq += np.square(flat).sum(1)
        count += flat.shape[1]
    if total is None or count == 0:
        raise ValueError("channel_stats needs at least one non-empty array")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images into flattened non-overlapping patches, row-major over the patch grid.

    Args:
        x: (..., C, H, W) with H and W divisible by ``patch``.
        patch: patch side length in pixels.

    Returns:
        (..., N, patch * patch * C) with N = (H / patch) * (W / patch); within a patch, values
        run over rows, then columns, then channels.

    Raises:
        ValueError: H or W not divisible by ``patch``, or fewer than 3 dimensions.
    """
    if x.ndim < 3:
        raise ValueError(f"patchify expects (..., C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch}")
    return rearrange(x, "... c (h p1) (w p2) -> ... (h w) (p1 p2 c)", p1=patch, p2=patch)


def unpatchify(
    patches: torch.Tensor, patch: int, grid_h: int, grid_w: int, channels: int
) -> torch.Tensor:
    """Inverse of `patchify`: reassemble (..., N, patch * patch * C) into (..., C, H, W).

    Args:
        patches: flattened patches in `patchify`'s layout.
        patch: patch side length in pixels.
        grid_h: patches per column (H / patch).
        grid_w: patches per row (W / patch).
        channels: C.

    Returns:
        (..., C, grid_h * patch, grid_w * patch).

    Raises:
        ValueError: the patch tensor's shape does not match the grid, patch size and channels.
    """
    want = (grid_h * grid_w, patch * patch * channels)
    if patches.ndim < 2 or tuple(patches.shape[-2:]) != want:
        got = tuple(patches.shape)
        raise ValueError(f"unpatchify expects (..., {want[0]}, {want[1]}), got {got}")
    return rearrange(
        patches,
        "... (h w) (p1 p2 c) -> ... c (h p1) (w p2)",
        h=grid_h,
        w=grid_w,
        p1=patch,
        p2=patch,
        c=channels,
    )


def grid_positions(h: int, w: int) -> torch.Tensor:
    """(row, column) of each cell of an h x w grid in `patchify`'s row-major order.

    Returns:
        LongTensor (h * w, 2).
    """
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows, cols], dim=-1).reshape(-1, 2)


def random_shift(
    x: torch.Tensor,
    max_shift: int,
    generator: torch.Generator,
    *,
    pad: Literal["zero", "edge"] = "zero",
) -> torch.Tensor:
    """Translate an image by a random whole-pixel offset: pad by ``max_shift``, crop back.

    Row and column offsets are drawn independently and uniformly from
    ``[-max_shift, max_shift]`` with ``generator``, so the result is reproducible.

    Args:
        x: (..., C, H, W); all leading images get the same offset.
        max_shift: largest shift in pixels (0 returns a copy).
        generator: a CPU torch generator.
        pad: fill uncovered pixels with zeros or by repeating the edge pixels.

    Returns:
        A new tensor with the shape of ``x``.

    Raises:
        ValueError: negative ``max_shift``, unknown ``pad`` or fewer than 3 dimensions.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if pad not in ("zero", "edge"):
        raise ValueError(f"pad must be 'zero' or 'edge', got {pad!r}")
    if x.ndim < 3:
        raise ValueError(f"random_shift expects (..., C, H, W), got shape {tuple(x.shape)}")
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    if max_shift == 0:
        return x.clone()
    m = max_shift
    flat = x.reshape(-1, *x.shape[-3:])  # (B, C, H, W): replicate padding needs a batch dim
    padded = F.pad(flat, (m, m, m, m), mode="constant" if pad == "zero" else "replicate")
    h, w = x.shape[-2:]
    out = padded[:, :, m - dy : m - dy + h, m - dx : m - dx + w]
    return out.reshape(x.shape).clone()
