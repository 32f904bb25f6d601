"""Masked-token modelling (BERT-style) over one discrete modality, with a bidirectional encoder.

Training draws random windows of `context` tokens from the split's id stream (as `lm` does) and
hides a fraction `mask_prob` of each window's tokens: of those, 80% are replaced by a [MASK] id,
10% by a random id and 10% left as they are; the loss is the cross-entropy of the hidden tokens
only (Devlin et al. 2019). [MASK] is one id appended to the modality's vocabulary in the model
(the tokenizer is untouched). Which tokens are hidden is a pure function of (seed, step,
micro-step, rank), so resume stays exact. `evaluate` hides tokens of non-overlapping windows with
a fixed generator and reports their loss and accuracy; `predict` and `sample --prompt` fill in the
blanks (`[task] blank`, "_" by default) of a text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from seqmodel.errors import UserError
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment, TokenSet, dense_set
from seqmodel.task import SPLITS, RandomBatches, Slice, TaskContext, chunks, masked_mean, per_split, random_generator


@dataclass
class MLMConfig:
    """`[task] kind = "mlm"`."""

    modality: str = ""
    """The modality to model (default: the recipe's only tokenizer); it must be discrete."""
    mask_prob: float = 0.15
    """Fraction of each window's tokens hidden and predicted (at least one per window)."""
    blank: str = "_"
    """What marks a token to fill in, in the texts given to `predict` and `sample --prompt`."""
    eval_batch_size: int = 32
    """Windows per forward pass in `evaluate` (`--limit` counts these batches)."""

    def validate(self) -> list[tuple[str, str]]:
        bad = [] if 0 < self.mask_prob < 1 else [("mask_prob", f"must be in (0, 1), got {self.mask_prob}")]
        if not self.blank:
            bad.append(("blank", "must not be empty"))
        return bad + ([] if self.eval_batch_size >= 1 else [("eval_batch_size", "must be at least 1")])


class MaskedWindows:
    """Random windows (`windows`), each with its tokens hidden by a generator seeded by the slice."""

    def __init__(self, windows: RandomBatches, hide, seed: int) -> None:
        self.windows, self.hide, self.seed = windows, hide, seed

    def batch(self, where: Slice) -> TokenSet:
        return self.hide(self.windows.batch(where), random_generator(self.seed, where.step, where.micro, where.rank, 2))


class MLMTask:
    """See the module docstring."""

    Config = MLMConfig
    capabilities = ("generate", "predict", "modalities", "metrics")
    metric_names = ("accuracy",)  # what metrics() reports (`[train] keep_best` is checked against them)
    loss_label = "cross-entropy (nats/hidden token)"

    def __init__(self, config: MLMConfig) -> None:
        self.config = config

    def setup(self, ctx: TaskContext) -> None:
        if ctx.model.arch != "encoder":
            raise UserError(f"{ctx.where}: [model] arch: the mlm task reads both sides of a token: it needs an "
                            f"\"encoder\", got {ctx.model.arch!r}")
        self.ctx, self.T = ctx, ctx.model.context
        self.modality = ctx.modality(self.config.modality, "one to model")
        self.tok = ctx.tokenizers[self.modality]
        if not self.tok.spec().discrete:
            raise UserError(f"{ctx.where}: [task] mlm needs a discrete tokenizer; {self.modality!r} is continuous")
        self.mask_id = self.tok.spec().vocab_size

    def model_specs(self, specs: dict[str, ModalitySpec]) -> list[ModalitySpec]:
        """The tokenizers' modalities, the modelled one's vocabulary grown by [MASK]."""
        return [replace(s, vocab_size=s.vocab_size + 1) if m == self.modality else s for m, s in specs.items()]

    def outputs(self) -> tuple[str, ...]:
        return (self.modality,)

    def build_head(self, d_model: int):
        return None

    @per_split
    def ids(self, split: str) -> torch.Tensor:
        ids = self.ctx.stream(self.modality, split)
        if len(ids) < self.T:
            raise UserError(f"{self.ctx.where}: [data] the {split} split has {len(ids)} tokens, fewer than [model] "
                            f"context = {self.T}")
        return ids

    def window(self, ids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        return ids[starts[:, None] + torch.arange(self.T)]  # (B, T)

    def hide(self, ts: TokenSet, g: torch.Generator) -> TokenSet:
        """Hide tokens of every window: targets at the hidden ones, [MASK] / random / kept inputs."""
        ids = ts.inputs[self.modality].ids
        chosen = torch.rand(ids.shape, generator=g) < self.config.mask_prob
        pick, empty = torch.randint(ids.shape[1], (len(ids),), generator=g), ~chosen.any(1)
        chosen[empty, pick[empty]] = True  # a window with nothing hidden gets one hidden token
        how = torch.rand(ids.shape, generator=g)
        random_ids = torch.randint(self.mask_id, ids.shape, generator=g)
        inputs = torch.where(chosen & (how < 0.8), self.mask_id, torch.where(chosen & (how < 0.9), random_ids, ids))
        return dense_set(self.modality, ids=inputs, targets=torch.where(chosen, ids, -100))

    def batches(self, split: str, train: bool) -> MaskedWindows:
        ids = self.ids(split)
        windows = RandomBatches(len(ids) - self.T + 1, lambda starts: dense_set(self.modality, ids=self.window(ids, starts)),
                                self.ctx.split_seed(split))
        return MaskedWindows(windows, self.hide, self.ctx.split_seed(split))

    def logits(self, core, batch: TokenSet) -> torch.Tensor:
        logits = core.output(self.modality, core(batch), batch).float()
        return logits.index_fill(-1, torch.tensor([self.mask_id], device=logits.device), float("-inf"))

    def loss(self, core, head, batch: TokenSet):
        targets = batch.inputs[self.modality].targets
        losses = F.cross_entropy(self.logits(core, batch).flatten(0, 1), targets.flatten(), ignore_index=-100,
                                 reduction="none")
        counted = targets.flatten() != -100
        return masked_mean(losses, counted), {"tokens": targets.numel(), "targets": int(counted.sum())}

    @torch.no_grad()
    def evaluate(self, model, split: str, limit: int | None, options) -> dict:
        """Loss and accuracy on hidden tokens of every window of `split` (fixed masking per split)."""
        ids = self.ids(split)
        g = random_generator(self.ctx.seed, SPLITS.index(split), 3)
        total = right = count = 0
        for starts in chunks(torch.arange(len(ids) // self.T) * self.T, self.config.eval_batch_size, limit, f"eval {split}"):
            batch = self.hide(dense_set(self.modality, ids=self.window(ids, starts)), g).to(model.device)
            logits, targets = self.logits(model.core, batch), batch.inputs[self.modality].targets
            keep = targets != -100
            total += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            right, count = right + int((logits[keep].argmax(-1) == targets[keep]).sum()), count + int(keep.sum())
        return {"loss": total / count, "accuracy": right / count, "masked_tokens": count}

    def metrics(self, model, split: str) -> dict[str, float]:
        """Accuracy on hidden tokens of the split's first windows (`eval_batches` batches)."""
        return {"accuracy": self.evaluate(model, split, self.ctx.eval_batches, None)["accuracy"]}

    # -- filling in blanks ---------------------------------------------------------------------
    @torch.no_grad()
    def fill(self, model, text: str) -> str:
        """`text` with every blank replaced by the most likely token."""
        pieces = [self.ctx.encode(self.modality, p, stream=True).ids for p in text.split(self.config.blank)]
        ids = torch.cat([torch.cat([p, torch.tensor([self.mask_id])]) for p in pieces[:-1]] + [pieces[-1]])
        if not 0 < len(ids) <= self.T:
            raise UserError(f"the text to fill in has {len(ids)} tokens; give 1 to [model] context = {self.T}")
        batch = dense_set(self.modality, ids=ids[None]).to(model.device)
        best = self.logits(model.core, batch)[0].argmax(-1).cpu()
        return self.tok.decode(Segment(self.modality, ids=torch.where(ids == self.mask_id, best, ids)))

    def generate(self, model, prompt: str, cfg, use_cache: bool = True) -> str:
        """`seqmodel sample RUN --prompt TEXT`: TEXT with its blanks filled in."""
        if self.config.blank not in prompt:
            raise UserError(f"the prompt has no blank to fill in; mark tokens with {self.config.blank!r} ([task] blank)")
        return self.fill(model, prompt)

    def predict(self, model, paths: list[str]) -> list[dict]:
        """Each text file with its blanks filled in: [{"file", "text"}, ...]."""
        return [{"file": p, "text": self.fill(model, self.ctx.read_input(self.modality, p))} for p in paths]
