"""Image sources: scikit-learn's bundled 8x8 digits and a local class-per-folder image tree.

Examples are ``{"image": PIL.Image (mode "L" or "RGB"), "label": int}``; each source exposes
`label_names` (label i is called ``label_names[i]``). Splits are stratified (every class in the
same proportion in train, val and test) and a pure function of `split_seed`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from seqmodel.errors import UserError

from seqmodel_plugins.image_data import DIGIT_NAMES, digits_examples, imagefolder_examples, stratified_split

SPLITS = ("train", "val", "test")


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise UserError(f"unknown split {name!r} (expected one of {', '.join(SPLITS)})")


def _fraction_problems(val: float, test: float) -> list[tuple[str, str]]:
    bad = [(k, f"must be in [0, 1), got {v}") for k, v in (("val_fraction", val), ("test_fraction", test)) if not 0 <= v < 1]
    if not bad and val + test >= 1:
        bad.append(("test_fraction", f"val_fraction + test_fraction must be below 1, got {val + test}"))
    return bad


def _digest(examples: list[dict]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        img = ex["image"]
        h.update(f"{img.mode}{img.size}{ex['label']}".encode() + img.tobytes())
    return h.hexdigest()


def _split(examples: list[dict], seed: int, val: float, test: float) -> dict[str, list[dict]]:
    parts = stratified_split([ex["label"] for ex in examples], seed, val=val, test=test)
    return {name: [examples[i] for i in idx] for name, idx in parts.items()}


@dataclass
class DigitsConfig:
    """`[data] source = "digits"`."""

    split_seed: int = 0
    """Seed of the stratified train/val/test split (the same seed gives the same split)."""
    val_fraction: float = 0.15
    """Fraction of the 1,797 images held out for validation."""
    test_fraction: float = 0.15
    """Fraction of the images held out for test."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        return _fraction_problems(self.val_fraction, self.test_fraction)


class DigitsSource:
    """scikit-learn's 1,797 handwritten digits (8x8 grey), split by `split_seed`."""

    Config = DigitsConfig
    fields = ("image", "label")
    capabilities = ("info",)
    label_names = DIGIT_NAMES

    def info(self) -> dict:
        return {"label_names": list(self.label_names)}

    def __init__(self, config: DigitsConfig) -> None:
        self.config = config

    @cached_property
    def _splits(self) -> dict[str, list[dict]]:
        c = self.config
        return _split(digits_examples(), c.split_seed, c.val_fraction, c.test_fraction)

    def split(self, name: str) -> list[dict]:
        _check_split(name)
        return self._splits[name]

    def identity(self) -> dict:
        c = self.config
        return {"source": "digits", "split_seed": c.split_seed, "val_fraction": c.val_fraction,
                "test_fraction": c.test_fraction, "sha256": _digest(digits_examples())}


@dataclass
class ImageFolderConfig:
    """`[data] source = "imagefolder"`: ``FOLDER/<class name>/<image files>``."""

    path: str = ""
    """One folder of class sub-folders, split into train/val/test by `split_seed`."""
    train: str = ""
    """Or: the training folder (instead of `path`); splits without their own folder are carved from it."""
    val: str = ""
    """The validation folder (with `train`); the same class sub-folder names."""
    test: str = ""
    """The test folder (with `train`); the same class sub-folder names."""
    split_seed: int = 0
    """Seed of the stratified split of `path` (or of `train`, for splits without a folder)."""
    val_fraction: float = 0.15
    """Fraction held out for validation when it has no folder of its own."""
    test_fraction: float = 0.15
    """Fraction held out for test when it has no folder of its own."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        if bool(self.path) == bool(self.train):
            return [("path", "give either path (one folder to split) or train (with optional val/test folders)")]
        if self.path and (self.val or self.test):
            return [("val" if self.val else "test", "separate val/test folders go with train, not with path")]
        return _fraction_problems(self.val_fraction, self.test_fraction)


class ImageFolderSource:
    """Local images, one sub-folder per class (classes in sorted folder-name order)."""

    Config = ImageFolderConfig
    fields = ("image", "label")
    capabilities = ("info",)

    def info(self) -> dict:
        """The class names: the sub-folder names, sorted."""
        return {"label_names": self.label_names}

    def __init__(self, config: ImageFolderConfig) -> None:
        self.config = config

    @property
    def label_names(self) -> list[str]:
        return self._loaded[1]

    @cached_property
    def _loaded(self) -> tuple[dict[str, list[dict]], list[str]]:
        c = self.config
        if c.path:
            examples, names = imagefolder_examples(c.path)
            return _split(examples, c.split_seed, c.val_fraction, c.test_fraction), names
        examples, names = imagefolder_examples(c.train)
        own = {s: self._folder(getattr(c, s), names) for s in ("val", "test") if getattr(c, s)}
        val = 0.0 if "val" in own else c.val_fraction
        test = 0.0 if "test" in own else c.test_fraction
        splits = _split(examples, c.split_seed, val, test) if val or test else {"train": examples}
        return {**splits, **own}, names

    @staticmethod
    def _folder(folder: str, names: list[str]) -> list[dict]:
        examples, own_names = imagefolder_examples(folder)
        for name in own_names:
            if name not in names:
                raise UserError(f"{folder}: class folder {name!r} is not one of the training classes ({', '.join(names)})")
        remap = [names.index(n) for n in own_names]
        return [{**ex, "label": remap[ex["label"]]} for ex in examples]

    def split(self, name: str) -> list[dict]:
        _check_split(name)
        return self._loaded[0].get(name, [])

    def identity(self) -> dict:
        splits = self._loaded[0]
        return {"source": "imagefolder", **self.config.__dict__,
                "sha256": {s: _digest(splits.get(s, [])) for s in SPLITS}}
