"""Image sources: scikit-learn's bundled 8x8 digits and a local class-per-folder image tree.

Examples are ``{"image": PIL.Image (mode "L" or "RGB"), "label": int}``; each source exposes
`label_names` (label i is called ``label_names[i]``). Splits are stratified (every class in the
same proportion in train, val and test) and a pure function of `split_seed`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from seqmodel import files
from seqmodel.capabilities import SPLITS, check_split
from seqmodel.config import path_field
from seqmodel.errors import UserError
from seqmodel_plugins.image_data import DIGIT_NAMES, digits_examples, imagefolder_files, load_image, stratified_split


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
        check_split(name)
        return self._splits[name]

    def identity(self) -> dict:
        c = self.config
        return {"source": "digits", "split_seed": c.split_seed, "val_fraction": c.val_fraction,
                "test_fraction": c.test_fraction, "sha256": _digest(digits_examples())}


@dataclass
class ImageFolderConfig:
    """`[data] source = "imagefolder"`: ``FOLDER/<class name>/<image files>``."""

    path: str = path_field()
    """One folder of class sub-folders, split into train/val/test by `split_seed`."""
    train: str = path_field()
    """Or: the training folder (instead of `path`); splits without their own folder are carved from it."""
    val: str = path_field()
    """The validation folder (with `train`); the same class sub-folder names."""
    test: str = path_field()
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


class ImageFile(Mapping):
    """One example of an image folder, ``{"image": ..., "label": ...}``, whose image is decoded
    (`load_image`) each time it is read: a folder of any size costs only its file list in memory."""

    def __init__(self, path: Path, label: int) -> None:
        self.path, self.label = path, label

    def __getitem__(self, key: str):
        if key == "image":
            return load_image(self.path)
        if key == "label":
            return self.label
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in ("image", "label")

    def __iter__(self):
        return iter(("image", "label"))

    def __len__(self) -> int:
        return 2


class ImageFolderSource:
    """Local images, one sub-folder per class (classes in sorted folder-name order). Images are
    decoded per example when read; the first time a tree is seen every image is decoded once, to
    check it and to compute the identity, which is then kept (keyed by every file's path, size
    and times) so a later run starts without reading the images."""

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
    def _loaded(self) -> tuple[dict[str, list[ImageFile]], list[str]]:
        c = self.config
        if c.path:
            files, names = imagefolder_files(c.path)
            examples = [ImageFile(f, y) for f, y in files]
            return _split(examples, c.split_seed, c.val_fraction, c.test_fraction), names
        files, names = imagefolder_files(c.train)
        examples = [ImageFile(f, y) for f, y in files]
        own = {s: self._folder(getattr(c, s), names) for s in ("val", "test") if getattr(c, s)}
        val = 0.0 if "val" in own else c.val_fraction
        test = 0.0 if "test" in own else c.test_fraction
        splits = _split(examples, c.split_seed, val, test) if val or test else {"train": examples}
        return {**splits, **own}, names

    @staticmethod
    def _folder(folder: str, names: list[str]) -> list[ImageFile]:
        files, own_names = imagefolder_files(folder)
        for name in own_names:
            if name not in names:
                raise UserError(f"{folder}: class folder {name!r} is not one of the training classes ({', '.join(names)})")
        remap = [names.index(n) for n in own_names]
        return [ImageFile(f, remap[y]) for f, y in files]

    def split(self, name: str) -> list[ImageFile]:
        check_split(name)
        self._digests  # the first sight of a tree reads (and so checks) every image
        return self._loaded[0].get(name, [])

    @cached_property
    def _digests(self) -> dict[str, str]:
        """split -> sha256 of its decoded images and labels, kept per state of the files."""
        splits = self._loaded[0]
        rows = [[str(ex.path), *_file_state(ex.path), ex.label] for s in SPLITS for ex in splits.get(s, [])]
        folder = files.stores_root() / "images" / hashlib.sha256(json.dumps(rows).encode()).hexdigest()
        with files.locked(folder):
            if files.intact(folder):
                try:
                    return json.loads((folder / "digests.json").read_text())
                except (OSError, ValueError):
                    pass
            digests = {s: _digest([{"image": ex["image"], "label": ex.label} for ex in splits.get(s, [])]) for s in SPLITS}
            files.remove_leftovers(folder)
            with files.new_folder(folder, sealed=True) as tmp:
                (tmp / "digests.json").write_text(json.dumps(digests))
            return digests

    def identity(self) -> dict:
        return {"source": "imagefolder", **self.config.__dict__, "sha256": self._digests}


def _file_state(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
