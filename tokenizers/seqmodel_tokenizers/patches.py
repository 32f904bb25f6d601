"""Image patch tokenizer: an image becomes a set of P x P patch vectors at (row, col) positions.

An image (PIL, numpy array or file path; grey or RGB, any size) is converted to the configured
channel count, centre-cropped to a square and resized to `size` x `size` with Pillow, optionally
shifted (training augmentation), normalised per channel and cut into non-overlapping patches:
one continuous segment of shape (N, P*P*C) with 2-D grid positions (row, col). Decoding places
each patch at its position, so any order of the patch tokens decodes to the same image.

References: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (ViT).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from seqmodel.errors import UserError
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment

from .patch_ops import (
    _LUMA,
    channel_stats,
    grid_positions,
    patchify,
    random_shift,
    to_array,
    unpatchify,
)

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
POSITIONS = ("2d", "learned", "none")


@dataclass
class PatchConfig:
    """`[tokenizer] kind = "patches"`."""

    size: int = 0
    """Side of the square image the model sees, in pixels (0: the training images' shorter side)."""
    patch: int = 4
    """Patch side P in pixels; must divide `size`."""
    channels: int = 0
    """1 (grey) or 3 (RGB); 0: RGB if any training image is colour, else grey. Other inputs are converted."""
    mean: list[float] | None = None
    """Per-channel mean for normalisation (values in [0, 1]); default: computed on the training split."""
    std: list[float] | None = None
    """Per-channel standard deviation for normalisation; default: computed on the training split."""
    resample: str = "bicubic"
    """Pillow resampling filter for resizing: nearest, bilinear, bicubic or lanczos."""
    max_shift: int = 0
    """Training augmentation: translate by up to this many pixels (pad and crop back)."""
    shift_pad: str = "zero"
    """What fills the pixels a shift, rotation or zoom uncovers: "zero" (black) or "edge" (the border)."""
    rotate: float = 0.0
    """Training augmentation: rotate by a random angle in [-rotate, rotate] degrees."""
    scale: float = 0.0
    """Training augmentation: zoom by a random factor in [1 - scale, 1 + scale]."""
    flip: bool = False
    """Training augmentation: mirror left-right with probability 1/2 (not for digits or text)."""
    position: str = "2d"
    """Position encoding: "2d" (row and column tables), "learned" (1-D patch index) or "none"."""
    cache_mb: float = 256.0
    """Memory for keeping resized in-memory images between epochs (0 turns the cache off)."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = []
        if self.size < 0:
            bad.append(("size", f"must be 0 (automatic) or positive, got {self.size}"))
        if self.patch < 1:
            bad.append(("patch", f"must be at least 1, got {self.patch}"))
        elif self.size and self.size % self.patch:
            bad.append(("patch", f"must divide size={self.size}, got {self.patch}"))
        if self.channels not in (0, 1, 3):
            bad.append(("channels", f"expected 0 (automatic), 1 or 3, got {self.channels}"))
        for key in ("mean", "std"):
            vals = getattr(self, key)
            if vals is not None and (len(vals) not in (1, 3) or (self.channels and len(vals) != self.channels)):
                bad.append((key, f"expected one value per channel, got {len(vals)}"))
        if self.std is not None and any(v <= 0 for v in self.std):
            bad.append(("std", "every value must be positive"))
        if (self.mean is None) != (self.std is None):
            bad.append(("std" if self.std is None else "mean", "give both mean and std, or neither"))
        if self.resample not in RESAMPLE:
            bad.append(("resample", f"expected one of {', '.join(RESAMPLE)}, got {self.resample!r}"))
        if not 0 <= self.rotate <= 180:
            bad.append(("rotate", f"must be in [0, 180] degrees, got {self.rotate}"))
        if not 0 <= self.scale < 1:
            bad.append(("scale", f"must be in [0, 1), got {self.scale}"))
        if self.max_shift < 0:
            bad.append(("max_shift", f"must not be negative, got {self.max_shift}"))
        if self.shift_pad not in ("zero", "edge"):
            bad.append(("shift_pad", f"expected 'zero' or 'edge', got {self.shift_pad!r}"))
        if self.cache_mb < 0:
            bad.append(("cache_mb", f"must not be negative, got {self.cache_mb}"))
        if self.position not in POSITIONS:
            bad.append(("position", f"expected one of {', '.join(POSITIONS)}, got {self.position!r}"))
        return bad


def random_affine(x: torch.Tensor, degrees: float, scale: float, generator: torch.Generator, pad: str = "zero") -> torch.Tensor:
    """Rotate by an angle uniform in [-degrees, degrees] and zoom by a factor uniform in
    [1 - scale, 1 + scale] about the image centre (bilinear); x (C, H, W)."""
    u = torch.rand(2, generator=generator) * 2 - 1
    angle, zoom = math.radians(degrees) * float(u[0]), 1.0 + scale * float(u[1])
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=x.dtype)  # output -> input coordinates
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    mode = "zeros" if pad == "zero" else "border"
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode=mode, align_corners=False)[0]


def _is_colour(value: Any) -> bool:
    if isinstance(value, Image.Image):
        return value.mode not in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
    shape = np.shape(value)
    return len(shape) == 3 and shape[2] >= 3


def _short_side(value: Any) -> int:
    if isinstance(value, Image.Image):
        return min(value.size)
    return min(np.shape(value)[:2])


class PatchTokenizer:
    """See the module docstring. State after `fit`/`load`: size, channels, mean and std."""

    Config = PatchConfig
    FILE = "patches.json"
    capabilities = ("augment", "read_file", "examples", "preprocessing")

    def __init__(self, config: PatchConfig, modality: str = "image") -> None:
        self.config, self.modality = config, modality
        self.size, self.channels = config.size, config.channels
        self.mean = self.std = None
        self._cache: dict[int, tuple[Any, torch.Tensor]] = {}  # id(image) -> (image, pixels)
        self._cache_bytes = 0
        if config.mean is not None:
            self._set_stats(config.mean, config.std)

    def _set_stats(self, mean, std) -> None:
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        if self.channels and len(mean) == 1:
            mean, std = np.repeat(mean, self.channels), np.repeat(std, self.channels)
        self.mean = torch.from_numpy(mean).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.from_numpy(np.maximum(std, 1e-6)).view(-1, 1, 1)

    @property
    def grid(self) -> int:
        """Patches per row (and per column)."""
        return self.size // self.config.patch

    def _need_state(self) -> None:
        if not self.size or not self.channels or self.mean is None:
            raise RuntimeError("patches tokenizer: call fit() or load() before encoding")

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, values: Iterable[Any]) -> None:
        """Fix size and channels (when automatic) and per-channel mean/std from training images."""
        images = [self.read_file(v) if isinstance(v, (str, os.PathLike)) else v for v in values]
        self._cache, self._cache_bytes = {}, 0
        if not images:
            raise UserError("patches tokenizer: the training split has no images to fit on")
        if not self.size:
            self.size = min(_short_side(v) for v in images)
            if self.size % self.config.patch:
                raise UserError(f"patches tokenizer: patch {self.config.patch} does not divide the training images' "
                                f"size {self.size}; set [tokenizer] size to a multiple of it")
        if not self.channels:
            self.channels = 3 if any(_is_colour(v) for v in images) else 1
        if self.config.mean is not None:
            if len(self.config.mean) not in (1, self.channels):
                raise UserError(f"patches tokenizer: mean/std give {len(self.config.mean)} values for "
                                f"{self.channels}-channel images; give 1 or {self.channels}")
            self._set_stats(self.config.mean, self.config.std)
            return
        mean, std = channel_stats(self.pixels(v) for v in images)
        self._set_stats(mean, std)

    def spec(self) -> ModalitySpec:
        """Continuous tokens of width P*P*C at 2-D (row, col) positions."""
        if not self.size or not self.channels:
            raise RuntimeError("patches tokenizer: call fit() or load() before spec()")
        n = self.grid
        limits = {"2d": (n, n), "learned": (n * n,), "none": ()}[self.config.position]
        width = self.config.patch ** 2 * self.channels
        return ModalitySpec(self.modality, width=width, position=self.config.position, max_positions=limits)

    # -- encoding ----------------------------------------------------------------------------
    def read_file(self, path: str | os.PathLike) -> Image.Image:
        """Read an image file (one-line `UserError` for a missing or non-image file)."""
        from seqmodel_plugins.image_data import load_image

        return load_image(path)

    def pixels(self, value: Any) -> torch.Tensor:
        """The image as a float (C, size, size) tensor in [0, 1], before normalisation.

        PIL images are cached by identity (holding a reference, so an id is never reused while
        cached) up to `cache_mb`: a training set is resized once, not once per epoch. The result
        is shared: never modify it in place.
        """
        hit = self._cache.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        x = self._convert(value)
        if isinstance(value, Image.Image) and self._cache_bytes + x.nbytes <= self.config.cache_mb * 2**20:
            self._cache[id(value)] = (value, x)
            self._cache_bytes += x.nbytes
        return x

    def _convert(self, value: Any) -> torch.Tensor:
        if isinstance(value, (str, os.PathLike)):
            value = self.read_file(value)
        try:
            array = to_array(value, self.size, self.channels, resample=RESAMPLE[self.config.resample])
        except (ValueError, TypeError) as err:
            raise UserError(f"patches tokenizer: cannot use {type(value).__name__} as an image: {err}") from None
        return torch.from_numpy(array)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel; x (..., C, H, W)."""
        self._need_state()
        return (x - self.mean) / self.std

    def augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The configured random rotation/zoom, shift and flip, drawn from `generator` (reproducible)."""
        g = generator if generator is not None else torch.default_generator
        if self.config.rotate or self.config.scale:
            x = random_affine(x, self.config.rotate, self.config.scale, g, self.config.shift_pad)
        if self.config.max_shift:
            x = random_shift(x, self.config.max_shift, g, pad=self.config.shift_pad)
        if self.config.flip and bool(torch.randint(2, (), generator=g)):
            x = x.flip(-1)
        return x

    def encode(self, value: Any, *, train: bool = False, generator: torch.Generator | None = None) -> Segment:
        """One image -> Segment(values (N, P*P*C), positions (N, 2) row/col in row-major order).

        Args:
            value: PIL image, numpy array (H, W) or (H, W, C), or an image file path.
            train: apply the configured augmentation.
            generator: where the augmentation's randomness comes from (default: torch's global RNG).
        """
        self._need_state()
        x = self.pixels(value)
        if train:
            x = self.augment(x, generator)
        values = patchify(self.normalise(x), self.config.patch)  # (N, P*P*C)
        rc = grid_positions(self.grid, self.grid)
        positions = rc if self.config.position == "2d" else torch.arange(len(rc))
        return Segment(self.modality, values=values.contiguous(), positions=positions)

    def preprocessing(self) -> dict:
        """What `read_file` and `encode` (not training) do to an image file, step by step, with
        the fitted numbers: enough to build this modality's ONNX inputs without seqmodel."""
        self._need_state()
        return {
            "kind": "image patches",
            "steps": [
                ("read: Pillow Image.open, ImageOps.exif_transpose; mode 1 -> L; P -> RGB (RGBA if it has "
                 "transparency); I, I;16, F -> L (values above 255 scaled by 255/65535, rounded); LA, RGBA: "
                 "alpha-composited over white (Image.alpha_composite) -> L, RGB; other modes -> RGB"),
                "pixels: float32 in [0, 1] (8-bit values / 255), (H, W, C)",
                "channels: grey -> RGB repeats the plane; RGB -> grey is the dot product with luma (float32)",
                "crop: the centre square, side = min(H, W), top = (H - side) // 2, left = (W - side) // 2",
                ("resize: unless already size x size, each channel alone as a Pillow mode 'F' (float32) image, "
                 "Image.resize((size, size), resample)"),
                "clip to [0, 1], then (x - mean) / std per channel (float32)",
                ("patches: (C, size, size) -> (N, patch * patch * C), row-major over the grid of patches; within "
                 "a patch rows, then columns, then channels (einops 'c (h p1) (w p2) -> (h w) (p1 p2 c)')"),
                "positions: 'row_column' gives (row, column) of each patch (N, 2); 'index' its index 0..N-1",
            ],
            "channels": self.channels, "luma": _LUMA.tolist(), "size": self.size, "resample": self.config.resample,
            "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(), "patch": self.config.patch,
            "positions": "row_column" if self.config.position == "2d" else "index",
        }

    # -- decoding ----------------------------------------------------------------------------
    def decode_array(self, segment: Segment, normalised: bool = False) -> torch.Tensor:
        """The patches of `segment` placed at their positions: (C, size, size).

        Grid cells without a patch are 0 (the mean colour when denormalised). `normalised=True`
        returns the model's view (what `encode` cut into patches), else pixel values in [0, 1].
        """
        self._need_state()
        n, P, C = self.grid, self.config.patch, self.channels
        pos = segment.positions
        index = pos[:, 0] * n + pos[:, 1] if pos.dim() == 2 else pos
        cells = segment.values.new_zeros(n * n, P * P * C)
        cells[index.long()] = segment.values
        x = unpatchify(cells, P, n, n, C)  # (C, size, size)
        return x if normalised else (x * self.std + self.mean).clamp(0.0, 1.0)

    def decode(self, segment: Segment) -> Image.Image:
        """A PIL image (mode "L" or "RGB", size x size) from a patch set, in any token order."""
        x = self.decode_array(segment).numpy()
        pixels = np.rint(x * 255.0).astype(np.uint8)
        return Image.fromarray(pixels[0] if self.channels == 1 else pixels.transpose(1, 2, 0))

    # -- persistence -------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        self._need_state()
        state = {"size": self.size, "channels": self.channels, "patch": self.config.patch,
                 "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}
        (directory / self.FILE).write_text(json.dumps(state))

    def load(self, directory: Path) -> None:
        path = directory / self.FILE
        try:
            state = json.loads(path.read_text())
            size, channels, mean, std = state["size"], state["channels"], state["mean"], state["std"]
            assert isinstance(size, int) and size > 0 and channels in (1, 3)
            assert state["patch"] == self.config.patch and len(mean) == len(std) == channels
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise UserError(f"{path}: missing or corrupt patch tokenizer state") from None
        self.size, self.channels = size, channels
        self._cache, self._cache_bytes = {}, 0
        self._set_stats(mean, std)

    def examples(self) -> list[Any]:
        """Samples for the conformance check: a grey and a colour image of other sizes."""
        grey = Image.fromarray((np.arange(144) * 1.7).astype(np.uint8).reshape(12, 12))
        colour = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 12, 3), dtype=np.uint8))
        return [grey, colour]
