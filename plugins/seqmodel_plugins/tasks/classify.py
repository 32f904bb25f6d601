"""Classification of whole examples: pool the encoder's tokens, a linear head, cross-entropy.

The input is one modality's segment (an image's patches, a sound's frames ...) taken from the
field its tokenizer is bound to; the label comes from the source field `label_field`. Pooling is
either the mean over the input's valid tokens, or a learned class token: the task adds a tiny
discrete modality ("cls", one id, no position) and prepends it to every example, so the core
stays modality-agnostic (ViT, Dosovitskiy et al. 2021). Label names travel with the run
(``task/labels.json``), so `predict` names classes without the data source.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seqmodel.errors import UserError
from seqmodel.plots import figure
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment, collate
from seqmodel.task import EpochBatches, TaskContext, chunks, per_split

POOLS = ("mean", "cls")
CLS = "cls"
MOST_CLASSES = 1_000_000
"""Integer labels are class indices: a larger one is an id (a product number ...), not a class."""


@dataclass
class ClassifyConfig:
    """`[task] kind = "classify"`."""

    modality: str = ""
    """The input modality (default: the recipe's only tokenizer)."""
    label_field: str = "label"
    """The source field holding each example's class (an integer, or a class name)."""
    pool: str = "mean"
    """"mean" (average of the input's tokens) or "cls" (a learned class token added to each example)."""
    num_classes: int = 0
    """Number of classes (0: the source's label names, else the largest training label + 1)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    eval_batch_size: int = 256
    """Examples per forward pass in eval, predict and report."""
    report_images: int = 36
    """Validation examples drawn, with predicted and true labels, in the end-of-run picture."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = []
        if self.pool not in POOLS:
            bad.append(("pool", f"expected one of {', '.join(POOLS)}, got {self.pool!r}"))
        if self.num_classes < 0 or self.num_classes == 1 or self.num_classes > MOST_CLASSES:
            bad.append(("num_classes", f"must be 0 (automatic) or from 2 to {MOST_CLASSES:,}, got {self.num_classes}"))
        if not 0 <= self.label_smoothing < 1:
            bad.append(("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}"))
        if self.eval_batch_size < 1:
            bad.append(("eval_batch_size", f"must be at least 1, got {self.eval_batch_size}"))
        if self.report_images < 0:
            bad.append(("report_images", f"must not be negative, got {self.report_images}"))
        return bad


class Labelled(Sequence):
    """(input value, class index) pairs of a split's examples; the value is read from its example
    each time (an image folder decodes the image then), so a large split is not held in memory."""

    def __init__(self, examples: Sequence, field: str, labels: list[int]) -> None:
        self.examples, self.field, self.labels = examples, field, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return self.examples[i][self.field], self.labels[i]


def largest_index(labels: list, key: str) -> int:
    """The largest of integer class labels (class indices), refusing labels that cannot be indices
    (a later check names a negative one or a fraction)."""
    top = 0
    for y in labels:
        try:
            top = max(top, int(y))
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"[task] label_field: label {y!r} in {key!r} is neither a class index nor a class name "
                            "(give all labels as integers 0, 1, 2 ... or all as names)") from None
    if top >= MOST_CLASSES:
        raise UserError(f"[task] label_field: label {top} in {key!r} would make {top + 1:,} classes (labels are class "
                        f"indices 0, 1, 2 ..., at most {MOST_CLASSES - 1:,}); renumber the classes, or give the labels "
                        "as text (class names)")
    return top


class ClassifyTask:
    """See the module docstring."""

    Config = ClassifyConfig
    capabilities = ("predict", "report", "state", "modalities", "metrics", "export", "export_info")
    metric_names = ("accuracy",)  # what metrics() reports (`[train] keep_best` is checked against them)
    loss_label = "cross-entropy (nats/example)"
    FILE = "labels.json"

    def __init__(self, config: ClassifyConfig) -> None:
        self.config = config
        self.label_names: list[str] | None = None

    # -- setup -------------------------------------------------------------------------------
    def setup(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.modality = ctx.modality(self.config.modality, "input")
        if self.config.pool == "cls" and CLS in ctx.tokenizers:
            raise UserError(f"[task] pool: 'cls' adds a modality named {CLS!r}, which a tokenizer already uses")
        self.tok = ctx.tokenizers[self.modality]
        if self.label_names is None:
            self.label_names = self._find_label_names()
        if len(self.label_names) < 2:
            raise UserError(f"[task] label_field: the data has {len(self.label_names)} class(es); a classifier needs at least 2")
        if self.config.num_classes and self.config.num_classes != len(self.label_names):
            raise UserError(f"[task] num_classes: {self.config.num_classes}, but the data has "
                            f"{len(self.label_names)} classes ({', '.join(self.label_names[:10])} ...)")

    def _find_label_names(self) -> list[str]:
        have, key = self.ctx.source_fields, self.config.label_field
        if have and key not in have:
            raise UserError(f"[task] label_field: the source has no field {key!r} (it has: {', '.join(have)})")
        names = self.ctx.source_info.get("label_names")
        if names is not None:
            return [str(n) for n in names]
        if self.config.num_classes:
            return [str(i) for i in range(self.config.num_classes)]
        labels = [ex.get(key, 0) for ex in self.ctx.examples("train")]
        empty = [i for i, y in enumerate(labels) if y is None or y == ""]
        if empty:
            raise UserError(f"[task] label_field: {len(empty)} of the {len(labels)} training examples have an empty "
                            f"{key!r} (the first is example {empty[0]}); give every example a class")
        if labels and all(isinstance(y, str) for y in labels):
            return sorted(set(labels))
        return [str(i) for i in range(largest_index(labels, key) + 1)]

    def model_specs(self, specs: dict[str, ModalitySpec]) -> list[ModalitySpec]:
        """The tokenizers' modalities, and the class-token modality when pooling by class token."""
        return [*specs.values()] + ([ModalitySpec(CLS, vocab_size=1, position="none")] if self.config.pool == "cls" else [])

    def outputs(self) -> tuple[str, ...]:
        return ()

    def build_head(self, d_model: int) -> nn.Module:
        """The classifier: a linear map from the pooled vector to one logit per class."""
        return nn.Linear(d_model, len(self.label_names))

    # -- data --------------------------------------------------------------------------------
    def label_index(self, value) -> int:
        """A label value (int or class name) as a class index, checked against the label names."""
        if isinstance(value, str) and value in self.label_names:
            return self.label_names.index(value)
        if value is None or value == "":
            raise UserError(f"[task] label_field: an example has an empty {self.config.label_field!r}; give every "
                            "example a class")
        try:
            index = int(value)
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < len(self.label_names) or isinstance(value, (bool, float)) and value != index:
            raise UserError(f"[task] label_field: label {value!r} is not a class index in [0, {len(self.label_names)}) "
                            f"or a class name ({', '.join(self.label_names[:10])})")
        return index

    @per_split
    def items(self, split: str) -> Labelled:
        """(input value, class index) for every example of a split (a value is read when asked)."""
        field, examples = self.ctx.fields[self.modality], self.ctx.examples(split)
        examples = examples if isinstance(examples, Sequence) else list(examples)  # a stream is read once
        labels = []
        for ex in examples:
            for key in (field, self.config.label_field):
                if key not in ex:
                    raise UserError(f"[task] label_field: an example of the {split} split has no field {key!r}")
            labels.append(self.label_index(ex[self.config.label_field]))
        if not labels:
            raise UserError(f"[data] the {split} split has no examples")
        return Labelled(examples, field, labels)

    def segments(self, value, train: bool = False, generator: torch.Generator | None = None) -> list[Segment]:
        """One example's token set: [class token,] the input's segment."""
        seg = self.ctx.encode(self.modality, value, train, generator)
        cls = [Segment(CLS, ids=torch.zeros(1, dtype=torch.long))] if self.config.pool == "cls" else []
        return cls + [seg]

    def collate(self, items: list[tuple[object, int]], generator: torch.Generator | None = None, train: bool = False):
        """A batch (TokenSet with extras["labels"]) of (value, label) pairs."""
        labels = torch.tensor([y for _, y in items], dtype=torch.long)
        return collate([self.segments(v, train, generator) for v, _ in items], {"labels": labels})

    def batches(self, split: str, train: bool) -> EpochBatches:
        return EpochBatches(self.items(split), partial(self.collate, train=train), self.ctx.split_seed(split), shuffle=train)

    # -- model -------------------------------------------------------------------------------
    def pool(self, hidden: torch.Tensor, batch) -> torch.Tensor:
        """(B, L, D) hidden states -> (B, D): the class token's, or the mean over input tokens."""
        B = hidden.shape[0]
        if self.config.pool == "cls":
            return hidden[torch.arange(B, device=hidden.device), batch.inputs[CLS].slot[:, 0]]
        inp = batch.inputs[self.modality]
        if inp.dense:
            return hidden.mean(1)
        h = hidden[torch.arange(B, device=hidden.device)[:, None], inp.slot] * inp.valid[..., None]  # (B, Tm, D)
        return h.sum(1) / inp.valid.sum(1, keepdim=True).clamp(min=1)

    def logits(self, core, head, batch) -> torch.Tensor:
        """(B, classes) logits of a batch."""
        return head(self.pool(core(batch), batch)).float()

    def export_outputs(self, core, head, batch) -> dict[str, torch.Tensor]:
        """What an exported graph adds: the class logits (B, classes)."""
        return {"logits": self.logits(core, head, batch)}

    def export_info(self) -> dict[str, dict]:
        """The class of each column of the exported logits."""
        return {"logits": {"classes": list(self.label_names)}}

    def loss(self, core, head, batch):
        logits = self.logits(core, head, batch)
        loss = F.cross_entropy(logits, batch.extras["labels"], label_smoothing=self.config.label_smoothing)
        return loss, {"tokens": int(batch.valid.sum())}

    @torch.no_grad()
    def scores(self, model, values: list, limit: int | None = None) -> torch.Tensor:
        """(N, classes) logits of input values, `eval_batch_size` at a time (the first `limit` batches)."""
        out = [self.logits(model.core, model.head, collate([self.segments(v) for v in chunk]).to(model.device)).cpu()
               for chunk in chunks(values, self.config.eval_batch_size, limit, desc="classifying")]
        return torch.cat(out) if out else torch.zeros(0, len(self.label_names))

    # -- evaluation, prediction, pictures ------------------------------------------------------
    def evaluate(self, model, split: str, limit: int | None, options) -> dict:
        """Accuracy, mean cross-entropy and per-class accuracy on a split (or its first `limit`
        batches of `eval_batch_size` examples)."""
        items = self.items(split)
        logits = self.scores(model, [v for v, _ in items], limit)
        labels = torch.tensor([y for _, y in items[: len(logits)]])
        right = logits.argmax(1) == labels
        per_class = {name: float(right[labels == k].float().mean()) for k, name in enumerate(self.label_names)
                     if bool((labels == k).any())}
        return {"accuracy": float(right.float().mean()), "loss": float(F.cross_entropy(logits, labels)),
                "examples": len(labels), "per_class_accuracy": per_class}

    def metrics(self, model, split: str) -> dict[str, float]:
        """Accuracy on the split (its first `eval_batches` batches of `eval_batch_size` examples)."""
        return {"accuracy": self.evaluate(model, split, self.ctx.eval_batches, None)["accuracy"]}

    def predict(self, model, paths: list[str]) -> list[dict]:
        """The most likely class of each input file: [{"file", "label", "prob"}, ...]."""
        probs = self.scores(model, [self.ctx.read_input(self.modality, p) for p in paths]).softmax(-1)
        best = probs.max(-1)
        return [{"file": str(p), "label": self.label_names[int(k)], "prob": float(v)}
                for p, v, k in zip(paths, best.values, best.indices)]

    def report(self, model, run_dir: Path) -> list[Path]:
        """Validation pictures: examples with predicted/true labels, and the confusion matrix."""
        items = self.items("val")
        labels = torch.tensor([y for _, y in items])
        preds = self.scores(model, [v for v, _ in items]).argmax(1)
        paths = [confusion_png(labels, preds, self.label_names, run_dir / "confusion_matrix.png")]
        shown = items[: self.config.report_images]
        pictures = [self.tok.decode(self.segments(v)[-1]) for v, _ in shown]
        grid = examples_png(pictures, [y for _, y in shown], preds[: len(shown)].tolist(), self.label_names,
                            run_dir / "val_predictions.png")
        return paths + ([grid] if grid else [])

    # -- persistence -------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        (directory / self.FILE).write_text(json.dumps({"label_names": self.label_names}))

    def load(self, directory: Path) -> None:
        path = directory / self.FILE
        try:
            names = json.loads(path.read_text())["label_names"]
            assert isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise UserError(f"{path}: missing or corrupt class labels") from None
        self.label_names = names


# -- pictures -------------------------------------------------------------------------------------
def confusion_png(labels: torch.Tensor, preds: torch.Tensor, names: list[str], path: Path) -> Path:
    """Counts of (true, predicted) class pairs as an annotated heat map."""
    K = len(names)
    counts = torch.bincount(labels * K + preds, minlength=K * K).view(K, K)  # (true, predicted)
    side = min(12.0, 2.5 + 0.5 * K)
    with figure(path, size=(side, side)) as (fig, ax):
        ax.imshow(counts.numpy(), cmap="Blues")
        if K <= 30:
            top = int(counts.max()) or 1
            for t in range(K):
                for p in range(K):
                    if counts[t, p]:
                        ax.text(p, t, int(counts[t, p]), ha="center", va="center", fontsize=8,
                                color="white" if counts[t, p] > top / 2 else "black")
            ax.set_xticks(range(K), names, rotation=90, fontsize=8)
            ax.set_yticks(range(K), names, fontsize=8)
        accuracy = float(counts.diag().sum()) / max(1, int(counts.sum()))
        ax.set(xlabel="predicted", ylabel="true", title=f"validation confusion matrix (accuracy {accuracy:.4f})")
    return path


def examples_png(pictures: list, truth: list[int], preds: list[int], names: list[str], path: Path) -> Path | None:
    """A grid of decoded inputs titled "predicted (true)", mistakes in red; None if not images."""
    import numpy as np

    arrays = [np.asarray(p) for p in pictures]
    if not arrays or any(a.ndim not in (2, 3) or a.dtype == object for a in arrays):
        return None
    cols = min(len(arrays), 9)
    rows = -(-len(arrays) // cols)
    with figure(path, grid=(rows, cols), size=(1.3 * cols, 1.5 * rows + 0.3), title="validation: predicted (true)") as (fig, axes):
        for ax in axes.flat:
            ax.axis("off")
        for ax, a, t, p in zip(axes.flat, arrays, truth, preds):
            ax.imshow(a, cmap="gray" if a.ndim == 2 else None, interpolation="nearest")
            title = names[p] if p == t else f"{names[p]} ({names[t]})"
            ax.set_title(title, fontsize=7, color="black" if p == t else "red")
    return path
