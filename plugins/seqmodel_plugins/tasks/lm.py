"""Next-token language modelling over one discrete modality (decoder-only).

Training draws random windows of `context + 1` tokens from the whole split, concatenated in
document order with the tokenizer's end-of-text id between documents (nanoGPT's sampling).
`evaluate` scores every token of a split once, in non-overlapping windows, and reports bits per
character so that tokenizers with different vocabularies compare directly (the characters are
the documents' own: an end-of-text separator is scored but counts no character).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F

from seqmodel.errors import UserError
from seqmodel.generate import choose_token, generate
from seqmodel.masks import layout_view, require_no_future
from seqmodel.model.config import SampleConfig
from seqmodel.segments import Segment, dense_set
from seqmodel.task import RandomBatches, TaskContext, can, chunks, masked_mean, per_split


@dataclass
class LMConfig:
    """`[task] kind = "lm"`."""

    modality: str = ""
    """The modality to model (default: the recipe's only tokenizer)."""


@dataclass
class LMEvalOptions:
    """`seqmodel eval RUN --set KEY=VALUE` options of the lm task."""

    batch_size: int = 32
    """Windows of `context` tokens per forward pass (`--limit` counts these batches)."""

    def validate(self) -> list[tuple[str, str]]:
        return [] if self.batch_size >= 1 else [("batch_size", f"must be at least 1, got {self.batch_size}")]


class LMTask:
    """See the module docstring."""

    Config = LMConfig
    EvalOptions = LMEvalOptions
    capabilities = ("generate", "score", "sample", "eval_options", "metrics")
    metric_names = ("bits_per_char",)  # what metrics() reports (`[train] keep_best` is checked against them)
    loss_label = "cross-entropy (nats/token)"

    def __init__(self, config: LMConfig) -> None:
        self.config = config

    def setup(self, ctx: TaskContext) -> None:
        if ctx.model.arch != "decoder":
            raise UserError(f"{ctx.where}: [model] arch: the lm task needs a \"decoder\", got {ctx.model.arch!r}")
        self.ctx, self.context = ctx, ctx.model.context
        self.modality = ctx.modality(self.config.modality, "one to model")
        self.tok = ctx.tokenizers[self.modality]
        if not self.tok.spec().discrete:
            raise UserError(f"{ctx.where}: [task] lm needs a discrete tokenizer; {self.modality!r} is continuous")
        self.eot = self.tok.eot_id if can(self.tok, "separator") else None
        view = layout_view([(self.modality, self.context)])
        try:
            require_no_future(ctx.model, view, torch.ones(self.context, dtype=torch.bool), "the lm task")
        except UserError as err:
            raise UserError(f"{ctx.where}: {err}") from None

    def outputs(self) -> tuple[str, ...]:
        return (self.modality,)

    def build_head(self, d_model: int):
        return None

    @per_split
    def ids(self, split: str) -> torch.Tensor:
        """The split as one id stream, encoded once (end-of-text ids between documents)."""
        return self.ctx.stream(self.modality, split)

    def batches(self, split: str, train: bool) -> RandomBatches:
        ids = self.ids(split)
        if len(ids) <= self.context + 1:
            raise UserError(f"{self.ctx.where}: [data] the {split} split has {len(ids)} tokens, fewer than "
                            f"[model] context + 2 = {self.context + 2}")
        return RandomBatches(len(ids) - self.context - 1, partial(self.windows, ids), self.ctx.split_seed(split))

    def windows(self, ids: torch.Tensor, starts: torch.Tensor):
        """The windows of `context + 1` tokens starting at `starts`, as inputs and next-token targets."""
        chunk = ids[starts[:, None] + torch.arange(self.context + 1)]  # (B, T + 1)
        return dense_set(self.modality, ids=chunk[:, :-1], targets=chunk[:, 1:])

    def loss(self, core, head, batch):
        logits = core.output(self.modality, core(batch), batch)
        targets = batch.inputs[self.modality].targets
        losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none")
        counted = targets.flatten() != -100
        return masked_mean(losses, counted), {"tokens": targets.numel(), "targets": int(counted.sum())}

    # -- evaluation and generation -------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model, split: str, limit: int | None, options: LMEvalOptions) -> dict:
        """Loss and bits per character over every token of `split` (or its first `limit` batches)."""
        T, ids = self.context, self.ids(split)
        starts = torch.arange((len(ids) - 1) // T) * T
        if len(starts) < 1:
            raise UserError(f"the {split} split is shorter than one context window ({T + 1} tokens)")
        total, windows = 0.0, 0
        for chunk in chunks(starts, options.batch_size, limit, f"eval {split}"):
            batch = self.windows(ids, chunk).to(model.device)
            logits = model.core.output(self.modality, model.core(batch), batch).float()
            targets = batch.inputs[self.modality].targets
            total += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
            windows += len(chunk)
        tokens = windows * T
        scored = ids[1 : tokens + 1]
        text_ids = scored if self.eot is None else scored[scored != self.eot]  # separators are predicted, not characters
        chars = len(self.tok.decode(Segment(self.modality, ids=text_ids)))
        return {"loss": total / tokens, "bits_per_char": total / math.log(2) / max(chars, 1),
                "tokens": tokens, "chars": chars}

    def metrics(self, model, split: str) -> dict[str, float]:
        """Bits per character over the split's first windows (`eval_batches` batches of them)."""
        return {"bits_per_char": self.evaluate(model, split, self.ctx.eval_batches, LMEvalOptions())["bits_per_char"]}

    def encode_prompt(self, text: str) -> torch.Tensor:
        ids = self.ctx.encode(self.modality, text, stream=True).ids
        if len(ids) == 0:
            raise UserError("the prompt is empty after tokenization; give at least one character")
        return ids

    def generate(self, model, prompt: str, cfg: SampleConfig, use_cache: bool = True) -> str:
        g = torch.Generator().manual_seed(cfg.seed)
        ids = self.encode_prompt(prompt)
        out = generate(model.core, [Segment(self.modality, ids=ids)], cfg.max_new_tokens,
                       lambda logits: choose_token(logits, cfg, g), use_cache=use_cache)
        return self.tok.decode(Segment(self.modality, ids=torch.cat([ids, torch.tensor(out, dtype=torch.long)])))

    def piece(self, i: int) -> str:
        return self.tok.piece(i) if can(self.tok, "pieces") else self.tok.decode(Segment(self.modality, ids=torch.tensor([i])))

    @torch.no_grad()
    def score(self, model, text: str) -> dict:
        """Log-probability (nats) of every token given the ones before it; the first token has
        no context and is not scored. Windows sit on a fixed grid, so scores are causal."""
        ids = self.encode_prompt(text)
        core, T = model.core, self.context
        n, half = len(ids), max(1, T // 2)
        logprobs: list[float | None] = [None]
        end, done = T, 1
        while done < n:
            start = end - T
            window = dense_set(self.modality, ids=ids[start : min(end, n)][None].to(model.device))
            lp = torch.log_softmax(core.output(self.modality, core(window), window).float()[0], -1).cpu()
            for j in range(done, min(end, n)):
                logprobs.append(float(lp[j - 1 - start, ids[j]]))
            done, end = min(end, n), end + half
        scored = sum(lp for lp in logprobs if lp is not None)
        chars = len(self.tok.decode(Segment(self.modality, ids=ids[1:])))
        return {"tokens": [{"token": self.piece(i), "logprob": lp} for i, lp in zip(ids.tolist(), logprobs)],
                "bits_per_char": (-scored / math.log(2) / chars) if chars else None}

    def sample(self, model, cfg: SampleConfig) -> list[str]:
        return [self.generate(model, cfg.prompt, replace(cfg, seed=cfg.seed + k)) for k in range(cfg.num_samples)]
