"""Image examples for the image recipes: the bundled digits, a class-per-folder tree, one file.

Every loader returns examples ``{"image": PIL.Image (mode "L" or "RGB"), "label": int}``.
Palette, alpha, 16-bit and CMYK files are normalised by `load_image`, so tokenizers only ever see
"L" or "RGB". Bad user input raises `seqmodel.errors.UserError` naming the file or folder.

References:
    scikit-learn `load_digits` (UCI optical recognition of handwritten digits, 8x8, values 0-16).
    Cox, "A constructive procedure for unbiased controlled rounding", JASA 1987 (the split sizes).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from seqmodel.errors import UserError
from seqmodel.files import not_regular

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_EXTENSIONS = ", ".join(IMAGE_EXTENSIONS)
_EXPECTED = "a folder with one sub-folder of images per class"
_EPS = 1e-9


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)  # (1797, 8, 8)
    return pixels, digits.target.astype(np.int64)


def digits_examples() -> list[dict]:
    """The 1,797 bundled scikit-learn digits as 8x8 greyscale images.

    Returns:
        One ``{"image": PIL.Image (mode "L", 8x8), "label": int}`` per digit, in scikit-learn's
        order; pixel values are ``round(v * 255 / 16)`` of the original 0-16 values.
    """
    pixels, labels = _digits_arrays()
    return [{"image": Image.fromarray(p), "label": int(y)} for p, y in zip(pixels, labels)]


def stratified_split(
    labels: Sequence[Hashable], seed: int, val: float = 0.15, test: float = 0.15
) -> dict[str, list[int]]:
    """Split example indices into train/val/test with the same class mix in each split.

    Every class's count in every split is within one image of its exact share, the test split
    holds ``ceil(N * test)`` examples, train ``floor(N * (1 - val - test))`` and val the rest.

    Args:
        labels: one class label per example.
        seed: seed for which examples land where; the same seed gives the same split.
        val: fraction of the examples for validation.
        test: fraction of the examples for test.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``: disjoint sorted index lists that
        together cover ``range(len(labels))``.

    Raises:
        ValueError: for no labels or fractions outside ``val, test >= 0, val + test < 1``.
    """
    if len(labels) == 0:
        raise ValueError("stratified_split needs at least one label")
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"need val >= 0, test >= 0 and val + test < 1, got {val=} {test=}")
    _, classes = np.unique(np.asarray(labels), return_inverse=True)
    counts = np.bincount(classes)
    n = len(classes)
    fracs = np.array([test, val, 1.0 - val - test])
    n_test = math.ceil(n * test - _EPS)
    n_train = math.floor(n * fracs[2] + _EPS)
    targets = np.array([n_test, n - n_test - n_train, n_train])
    rng = np.random.default_rng(seed)
    alloc = _controlled_rounding(counts, fracs, targets, rng)  # (K, 3) test/val/train per class
    split: dict[str, list[int]] = {"test": [], "val": [], "train": []}
    for c in range(len(counts)):
        members = rng.permutation(np.flatnonzero(classes == c))
        bounds = np.cumsum(alloc[c])
        for name, part in zip(split, np.split(members, bounds[:-1])):
            split[name].extend(part.tolist())
    return {name: sorted(split[name]) for name in ("train", "val", "test")}


def _controlled_rounding(
    counts: np.ndarray, fracs: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Round ``outer(counts, fracs)`` cell-wise to floor/ceil, rows summing to counts, columns to
    targets. Feasible (Cox 1987) because every set of columns' target total is a floor/ceil of
    its exact total, which holds for `stratified_split`'s three targets."""
    quota = np.outer(counts, fracs)  # (K, S)
    low = np.floor(quota + _EPS).astype(np.int64)
    high = np.ceil(quota - _EPS).astype(np.int64)
    alloc = low.copy()
    for c in range(len(counts)):
        order = np.lexsort((rng.random(len(fracs)), low[c] - quota[c]))
        alloc[c, order[: counts[c] - low[c].sum()]] += 1
    rows = rng.permutation(len(counts)).tolist()
    while (alloc.sum(0) != targets).any():
        _augment(alloc, low, high, targets, rows)
    return alloc


def _augment(
    alloc: np.ndarray, low: np.ndarray, high: np.ndarray, targets: np.ndarray, rows: list[int]
) -> None:
    """Move one unit from a surplus column to a deficit column along a shortest path of moves
    "row r gives one from column a to column b", each keeping row sums and cell bounds."""
    totals = alloc.sum(0)
    surplus = np.flatnonzero(totals > targets).tolist()
    parent: dict[int, tuple[int, int] | None] = {a: None for a in surplus}
    frontier = list(parent)
    while frontier:
        a = frontier.pop(0)
        for b in range(alloc.shape[1]):
            if b in parent:
                continue
            movable = (r for r in rows if alloc[r, a] > low[r, a] and alloc[r, b] < high[r, b])
            r = next(movable, None)
            if r is not None:
                parent[b] = (a, r)
                frontier.append(b)
    b = next((b for b in parent if totals[b] < targets[b]), None)
    if b is None:
        raise RuntimeError("stratified_split: no feasible rounding (a bug: one always exists)")
    while parent[b] is not None:
        a, r = parent[b]
        alloc[r, a] -= 1
        alloc[r, b] += 1
        b = a


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read one image file with Pillow as mode "L" (greyscale sources) or "RGB" (everything else).

    Transparency is composited over white, palettes are expanded, 16-bit greyscale is scaled to
    8 bits by its bit depth (`full_scale`), and EXIF orientation is applied. Animated files give their first frame.

    Args:
        path: the image file.

    Returns:
        The decoded image, fully loaded (the file is closed).

    Raises:
        UserError: the file is missing, a folder, not an image Pillow can read, or corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"image file {path} does not exist")
    if path.is_dir():
        raise UserError(f"{path} is a folder, expected an image file ({_EXTENSIONS})")
    odd = not_regular(path)
    if odd:
        raise UserError(f"{path} is not a regular file ({odd}), expected an image file")
    try:
        with Image.open(path) as image:
            image.load()
            return _normalise_mode(ImageOps.exif_transpose(image), full_scale(image))
    except Image.UnidentifiedImageError:
        raise UserError(
            f"{path} is not an image Pillow can read (expected {_EXTENSIONS})"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"image file {path} is corrupt or unreadable: {error}") from None


def full_scale(image: Image.Image) -> float:
    """The value of white in an integer ("I", "I;16" ...) or float ("F") image, from the bit depth
    of its mode and file format, never from its pixels (a per-image guess turns a dark exposure
    brighter than a light one): 16-bit modes and PNG's "I" 65535, a TIFF's "I" that of its
    BitsPerSample, other "I" images 16 bits; "F" is on the 8-bit scale."""
    if image.mode == "F":
        return 255.0
    if image.mode.startswith("I;16"):
        return 65535.0
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None and image.format == "TIFF" else None  # BitsPerSample
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    return float(2 ** (bits if isinstance(bits, int) and 8 <= bits <= 32 else 16) - 1)


def _normalise_mode(image: Image.Image, white: float | None = None) -> Image.Image:
    """`image` as mode "L" or "RGB"; integer and float images scaled by `white` (their `full_scale`)."""
    if image.mode in ("L", "RGB"):
        return image.copy()
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 / (white or full_scale(image))
        return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        grey = image.mode in ("LA", "La")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("L" if grey else "RGB")
        return image
    return image.convert("RGB")


def imagefolder_examples(root: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Load a class-per-folder image tree: ``root/<class name>/<image file>``.

    Classes are the sub-folders in sorted name order (label i is ``label_names[i]``); images are
    read eagerly with `load_image` in sorted file order (`imagefolder_files` lists them without
    reading). Hidden files and folders are skipped; files directly under ``root`` are ignored.

    Args:
        root: the folder holding one sub-folder per class.

    Returns:
        ``(examples, label_names)`` with examples ``{"image": PIL.Image, "label": int}``.

    Raises:
        UserError: ``root`` is missing or not a folder, holds no class folders, a class folder
            holds no images, or a file there is not a readable image.
    """
    files, names = imagefolder_files(root)
    return [{"image": load_image(file), "label": label} for file, label in files], names


def imagefolder_files(root: str | os.PathLike) -> tuple[list[tuple[Path, int]], list[str]]:
    """The (image file, label) pairs of a class-per-folder tree and the class names, checked as
    `imagefolder_examples` checks them but without reading the images."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"image folder {root} does not exist; expected {_EXPECTED}")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; expected {_EXPECTED}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"image folder {root} has no class sub-folders; expected {_EXPECTED}")
    found = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
        if not files:
            raise UserError(f"class folder {class_dir} holds no images ({_EXTENSIONS})")
        for file in files:
            odd = not_regular(file) if file.suffix.lower() in IMAGE_EXTENSIONS else None
            if odd:
                raise UserError(f"{file} is not a regular file ({odd}); class folder {class_dir} may hold only "
                                f"{_EXTENSIONS} files")
            if file.is_dir() or file.suffix.lower() not in IMAGE_EXTENSIONS:
                raise UserError(
                    f"{file} is not an image file; class folder {class_dir} may hold only "
                    f"{_EXTENSIONS} files"
                )
            found.append((file, label))
    return found, [p.name for p in class_dirs]
