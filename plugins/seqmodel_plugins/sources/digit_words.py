"""Captioned digit images: one or two of scikit-learn's 8x8 digits side by side on a 16x16
canvas, captioned with their number words ("four two").

Each split composes its pictures only from that split's digits (the digits split is stratified
by `split_seed`), so no test image is ever seen in training. Reading a two-digit caption needs
the image *and* the text written so far: which digit comes next depends on how many words are
already there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image

from seqmodel.capabilities import SPLITS, check_split
from seqmodel_plugins.image_data import DIGIT_NAMES, digits_examples, stratified_split


@dataclass
class DigitWordsConfig:
    """`[data] source = "digit_words"`."""

    train_pairs: int = 10000
    """Captioned pictures composed for training."""
    val_pairs: int = 1000
    """Captioned pictures for validation."""
    test_pairs: int = 2000
    """Captioned pictures for test."""
    max_digits: int = 2
    """Digits per picture: 1 or 2 (with 2, a third of the pictures hold one digit)."""
    split_seed: int = 0
    """Seed of the stratified digit split and of the composition."""
    val_fraction: float = 0.15
    """Fraction of the 1,797 digits whose images go to validation pictures."""
    test_fraction: float = 0.15
    """Fraction of the digits whose images go to test pictures."""

    def validate(self) -> list[tuple[str, str]]:
        bad = [(k, f"must be at least 1, got {getattr(self, k)}") for k in ("train_pairs", "val_pairs", "test_pairs")
               if getattr(self, k) < 1]
        if self.max_digits not in (1, 2):
            bad.append(("max_digits", f"expected 1 or 2, got {self.max_digits}"))
        for k in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, k) < 0.5:
                bad.append((k, f"must be in (0, 0.5), got {getattr(self, k)}"))
        return bad


def compose(images: list[Image.Image]) -> Image.Image:
    """One or two 8x8 grey digits, left to right, vertically centred on a black 16x16 canvas."""
    canvas = np.zeros((16, 16), dtype=np.uint8)
    left = 4 if len(images) == 1 else 0
    for i, img in enumerate(images):
        canvas[4:12, left + 8 * i : left + 8 * i + 8] = np.asarray(img, dtype=np.uint8)
    return Image.fromarray(canvas, mode="L")


class DigitWordsSource:
    """See the module docstring. Fields: ``image`` (16x16 grey), ``text`` (the number words),
    ``label`` (the digits as a string, e.g. "42")."""

    Config = DigitWordsConfig
    fields = ("image", "text", "label")

    def __init__(self, config: DigitWordsConfig) -> None:
        self.config = config

    @cached_property
    def _digits(self) -> dict[str, list[dict]]:
        c = self.config
        examples = digits_examples()
        parts = stratified_split([ex["label"] for ex in examples], c.split_seed, val=c.val_fraction, test=c.test_fraction)
        return {name: [examples[i] for i in idx] for name, idx in parts.items()}

    def split(self, name: str) -> list[dict]:
        check_split(name)
        return self._pictures(name)

    def _pictures(self, name: str) -> list[dict]:
        cache = self.__dict__.setdefault("_cache", {})
        if name not in cache:
            c = self.config
            pool = self._digits[name]
            rng = np.random.default_rng([c.split_seed, SPLITS.index(name)])
            out = []
            for _ in range(getattr(c, f"{name}_pairs")):
                count = 1 if c.max_digits == 1 or rng.random() < 1 / 3 else 2
                picked = [pool[int(j)] for j in rng.integers(0, len(pool), size=count)]
                labels = [ex["label"] for ex in picked]
                out.append({"image": compose([ex["image"] for ex in picked]),
                            "text": " ".join(DIGIT_NAMES[d] for d in labels), "label": "".join(map(str, labels))})
            cache[name] = out
        return cache[name]

    def identity(self) -> dict:
        c = self.config
        digest = hashlib.sha256(repr(sorted(vars(c).items())).encode()).hexdigest()
        return {"source": "digit_words", "config": digest}
