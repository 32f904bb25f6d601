"""Sequence-to-sequence: encode some modalities, decode a discrete one with cross-attention.

Generic over modalities: the encoder side is any set of input modalities (mel slices, image
patches, text ...), concatenated into one token set for the encoder; the decoder side is one
discrete target modality (e.g. `char` over a "text" field), trained by teacher forcing.

Begin/end of sequence. Plain tokenizers such as `char` have no special ids, so the task appends
two to the target's vocabulary in the model (`model_specs`): BOS = V and EOS = V + 1. The
tokenizer itself is untouched (its ids keep their meaning, `seqmodel tokenize` is unchanged, its
saved state is the plain one); only the model's target vocabulary grows by two. The decoder reads
[BOS, y1 .. yn] and predicts [y1 .. yn, EOS].

A batch is the decoder's token set with the encoder's as its `context`; a decoder-only model
(``arch = "decoder"``, e.g. ``mask = "prefix"``) reads the inputs as the first segments of one
stream instead, and its mask must not let the target see ahead.

Decoding is `seqmodel.generate.generate` with the encoder output as `context` (cross K/V
computed once, KV cache for self-attention), greedy or sampled. `evaluate` reports the
teacher-forced loss, the character error rate (Levenshtein distance over the reference length,
summed over the split) and the exact-match rate of the decoded strings, per value of a source
field too with `group_by` (accuracy by operand length ...). `seqmodel sample --prompt` reads a
file when the input tokenizer reads files (images, sounds), else takes the prompt as the input
itself (a typed question).

References: Sutskever et al. 2014 (sequence to sequence); Vaswani et al. 2017 (encoder-decoder
Transformer); Radford et al. 2022 (Whisper: log-mel encoder, text decoder).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from seqmodel.errors import UserError
from seqmodel.generate import choose_token, generate
from seqmodel.masks import layout_view, require_no_future
from seqmodel.model.config import SampleConfig
from seqmodel.plots import figure
from seqmodel.plugin import ModalitySpec
from seqmodel.progress import progress
from seqmodel.segments import Segment, TokenSet, collate
from seqmodel.task import EpochBatches, TaskContext, can, chunks, per_split


@dataclass
class Seq2SeqConfig:
    """`[task] kind = "seq2seq"`."""

    inputs: list[str] = field(default_factory=list)
    """Encoder-side modalities, in token order (default: every tokenizer but the target)."""
    target: str = ""
    """Decoder-side discrete modality (default: the recipe's only discrete tokenizer)."""
    max_new_tokens: int = 0
    """Longest decoded output, EOS included (0: the model's context minus one)."""
    label_smoothing: float = 0.0
    """Label smoothing of the training loss (`evaluate` reports plain cross-entropy)."""
    eval_batch_size: int = 64
    """Examples per teacher-forced forward pass in evaluation (`--limit` counts these batches)."""
    report_examples: int = 4
    """Validation examples drawn (features and transcriptions) in the end-of-run picture."""
    bucket: int = 8
    """Training order sorts examples by input length within blocks of this many batches, so a
    batch pads little (0 or 1: plain shuffling)."""
    group_by: str = ""
    """A source field: `evaluate` adds the exact-match rate and count of each of its values
    (e.g. "digits" for accuracy by operand length); "" for none."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = []
        if self.max_new_tokens < 0:
            bad.append(("max_new_tokens", f"must not be negative, got {self.max_new_tokens}"))
        if not 0 <= self.label_smoothing < 1:
            bad.append(("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}"))
        if self.eval_batch_size < 1:
            bad.append(("eval_batch_size", f"must be at least 1, got {self.eval_batch_size}"))
        for key in ("report_examples", "bucket"):
            if getattr(self, key) < 0:
                bad.append((key, f"must not be negative, got {getattr(self, key)}"))
        if len(set(self.inputs)) != len(self.inputs):
            bad.append(("inputs", f"names a modality twice: {self.inputs}"))
        return bad


@dataclass
class Seq2SeqEvalOptions:
    """`seqmodel eval RUN --set KEY=VALUE` options of the seq2seq task."""

    greedy: bool = True
    """Decode greedily (false: sample with the run's [sample] settings)."""


class BucketedBatches(EpochBatches):
    """`EpochBatches` whose epoch order groups examples of similar length: the seeded
    permutation is cut into blocks of `block` examples, each sorted by length. Still a pure
    function of (seed, epoch), so resuming replays the same batches."""

    def __init__(self, items, collate_fn, seed: int, lengths: list[int], block: int) -> None:
        super().__init__(items, collate_fn, seed, shuffle=True)
        self.lengths, self.block = torch.tensor(lengths), block

    def order(self, epoch: int) -> torch.Tensor:
        blocks = super().order(epoch).split(self.block)
        return torch.cat([b[torch.argsort(self.lengths[b], stable=True)] for b in blocks])


@contextmanager
def decoding_threads() -> Iterator[None]:
    """One intra-op CPU thread while decoding: token-by-token steps are too small to split, and
    a second thread only adds synchronisation (10x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: fewest insertions, deletions and substitutions turning a into b."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


class Seq2SeqTask:
    """See the module docstring."""

    Config = Seq2SeqConfig
    EvalOptions = Seq2SeqEvalOptions
    capabilities = ("generate", "predict", "sample", "report", "modalities", "eval_options", "metrics")
    metric_names = ("exact_match", "cer")  # what metrics() reports (`[train] keep_best` is checked against them)
    loss_label = "cross-entropy (nats/target token)"

    def __init__(self, config: Seq2SeqConfig) -> None:
        self.config = config

    # -- setup -------------------------------------------------------------------------------
    def setup(self, ctx: TaskContext) -> None:
        """Pick the input and target modalities; BOS and EOS follow the target's vocabulary."""
        arch = ctx.model.arch
        if arch == "encoder":
            raise UserError("[model] arch: seq2seq needs \"encoder_decoder\" (cross-attention) or \"decoder\" "
                            "(inputs as a prefix of one stream, e.g. mask = \"prefix\"), got \"encoder\"")
        self.ctx, self.prefix, self.context = ctx, arch == "decoder", ctx.model.context
        toks = ctx.tokenizers
        self.target = self.config.target or self._default_target(toks)
        if self.target not in toks:
            raise UserError(f"[task] target: no tokenizer for {self.target!r} (have: {', '.join(toks)})")
        if not toks[self.target].spec().discrete:
            raise UserError(f"[task] target: seq2seq decodes a discrete modality; {self.target!r} is continuous")
        self.tok = toks[self.target]
        self.bos = self.tok.spec().vocab_size
        self.eos = self.bos + 1
        self.inputs = list(self.config.inputs) or [m for m in toks if m != self.target]
        for m in self.inputs:
            if m not in toks or m == self.target:
                raise UserError(f"[task] inputs: {m!r} is not an input tokenizer "
                                f"(have: {', '.join(t for t in toks if t != self.target)})")
        if not self.inputs:
            raise UserError("[task] inputs: seq2seq needs at least one input tokenizer besides the target")
        group = self.config.group_by
        if group and ctx.source_fields and group not in ctx.source_fields:
            raise UserError(f"{ctx.where}: [task] group_by: the source has no field {group!r} "
                            f"(it has: {', '.join(ctx.source_fields)})")
        before = [(m, 4) for m in self.inputs] if self.prefix else []  # a prefix decoder reads the inputs first
        view = layout_view([*before, (self.target, 8)])
        try:
            require_no_future(ctx.model, view, view.segment == len(before), "the seq2seq task's decoder")
        except UserError as err:
            raise UserError(f"{ctx.where}: {err}") from None

    @staticmethod
    def _default_target(toks: dict) -> str:
        discrete = [m for m, t in toks.items() if t.spec().discrete]
        if len(discrete) != 1:
            raise UserError(f"[task] target: name the decoder modality "
                            f"(discrete tokenizers: {', '.join(discrete) or 'none'})")
        return discrete[0]

    def model_specs(self, specs: dict[str, ModalitySpec]) -> list[ModalitySpec]:
        """The tokenizers' modalities, the target's vocabulary grown by BOS and EOS."""
        return [replace(s, vocab_size=s.vocab_size + 2) if m == self.target else s for m, s in specs.items()]

    def outputs(self) -> tuple[str, ...]:
        return (self.target,)

    def build_head(self, d_model: int):
        return None

    def decode(self, ids: torch.Tensor) -> str:
        """Target ids as text, BOS and EOS dropped."""
        return self.tok.decode(Segment(self.target, ids=ids[ids < self.bos]))

    # -- data --------------------------------------------------------------------------------
    @per_split
    def items(self, split: str) -> list[tuple[tuple, torch.Tensor]]:
        """(encoder input values, target ids) of every example of a split."""
        rows = []
        for ex in self.ctx.examples(split):
            ids = self.ctx.encode(self.target, ex[self.ctx.fields[self.target]]).ids
            rows.append((tuple(ex[self.ctx.fields[m]] for m in self.inputs), ids))
        if not rows:
            raise UserError(f"[data] the {split} split has no examples")
        return rows

    def encoder_segments(self, values: tuple, train: bool = False, generator: torch.Generator | None = None,
                         name: str = "") -> list[Segment]:
        """The encoder's segments of one example (one per input modality)."""
        segments = [self.ctx.encode(m, value, train, generator) for m, value in zip(self.inputs, values)]
        total = sum(len(s) for s in segments)
        if total > self.context:
            where = name or (str(values[0]) if isinstance(values[0], (str, Path)) else "an example")
            raise UserError(f"{where}: {total} input tokens, more than the model's context of {self.context} "
                            f"(shorten the input or raise [model] context)")
        return segments

    def decoder_segment(self, ids: torch.Tensor) -> Segment:
        """[BOS, y1 .. yn] predicting [y1 .. yn, EOS]."""
        ids = ids.long()
        if len(ids) + 1 > self.context:
            raise UserError(f"a target of {len(ids)} tokens does not fit the model's context of {self.context}")
        inputs = torch.cat([ids.new_tensor([self.bos]), ids])
        return Segment(self.target, ids=inputs, targets=torch.cat([ids, ids.new_tensor([self.eos])]))

    def collate(self, items: list, generator: torch.Generator | None = None, train: bool = False) -> TokenSet:
        """The decoder's token set, the encoder's as its context (one stream for a decoder-only model)."""
        if self.prefix:  # one stream: the inputs, then [BOS, y1 .. yn]
            return collate([[*self.encoder_segments(v, train, generator), self.decoder_segment(ids)] for v, ids in items])
        encoder = collate([self.encoder_segments(v, train, generator) for v, _ in items])
        decoder = collate([[self.decoder_segment(ids)] for _, ids in items])
        return replace(decoder, context=encoder)

    def batches(self, split: str, train: bool) -> EpochBatches:
        seed, items, fn = self.ctx.split_seed(split), self.items(split), partial(self.collate, train=train)
        if train and self.config.bucket > 1:
            lengths = [sum(len(s) for s in self.encoder_segments(values)) for values, _ in items]
            return BucketedBatches(items, fn, seed, lengths, self.config.bucket * self.ctx.batch_size)
        return EpochBatches(items, fn, seed, shuffle=train)

    # -- loss --------------------------------------------------------------------------------
    def token_losses(self, core, batch: TokenSet, smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cross-entropy (B, T) of the decoder's targets, and which tokens count."""
        hidden = core(batch, context=batch.context)  # (B, L, D)
        logits = core.output(self.target, hidden, batch).float()  # (B, T, V)
        inp = batch.inputs[self.target]
        counts = inp.valid & (inp.targets != -100)
        losses = F.cross_entropy(logits.transpose(1, 2), inp.targets, ignore_index=-100, reduction="none",
                                 label_smoothing=smoothing)
        return losses, counts

    def loss(self, core, head, batch: TokenSet):
        losses, counts = self.token_losses(core, batch, self.config.label_smoothing)
        loss = losses.sum() / counts.sum().clamp(min=1)
        return loss, {"tokens": sum(int(ts.valid.sum()) for ts in (batch.context, batch) if ts is not None),
                      "targets": int(counts.sum())}

    # -- decoding ----------------------------------------------------------------------------
    def transcribe(self, model, segments: list[Segment], cfg: SampleConfig | None = None,
                   use_cache: bool = True, generator: torch.Generator | None = None) -> str:
        """Decode one example from its encoder segments: greedy when `cfg` is None or greedy."""
        cfg = cfg or SampleConfig(greedy=True)
        limit = min(self.config.max_new_tokens or self.context - 1, self.context - 1)

        def choose(logits: torch.Tensor) -> int:
            logits = logits.clone()
            logits[self.bos] = float("-inf")
            return choose_token(logits, cfg, generator)

        start = [Segment(self.target, ids=torch.tensor([self.bos]))]
        stop = (lambda t: t == self.eos)
        if self.prefix:
            limit = min(limit, self.context - 1 - sum(len(s) for s in segments))
            out = generate(model.core, [*segments, *start], limit, choose, use_cache=use_cache, stop=stop)
        else:
            out = generate(model.core, start, limit, choose, context=segments, use_cache=use_cache, stop=stop)
        return self.decode(torch.tensor(out, dtype=torch.long))

    def read(self, path: str) -> tuple:
        """An input file as the encoder's values (the one input tokenizer reads it)."""
        if len(self.inputs) != 1:
            raise UserError(f"predict reads one file per example, but the task has {len(self.inputs)} inputs "
                            f"({', '.join(self.inputs)}); use the Python API")
        return (self.ctx.read_input(self.inputs[0], path),)

    def prompt_values(self, prompt: str) -> tuple:
        """`sample --prompt`: a file when the input tokenizer reads files (images, sounds), else
        the input value itself (a typed question)."""
        if len(self.inputs) == 1 and not can(self.ctx.tokenizers[self.inputs[0]], "read_file"):
            return (prompt,)
        return self.read(prompt)

    @decoding_threads()
    def predict(self, model, paths: list[str]) -> list[dict]:
        """Greedy transcriptions of input files: [{"file", "text"}, ...]."""
        return [{"file": str(p), "text": self.transcribe(model, self.encoder_segments(self.read(p), name=str(p)))}
                for p in paths]

    @decoding_threads()
    def generate(self, model, prompt: str, cfg: SampleConfig, use_cache: bool = True) -> str:
        """`seqmodel sample RUN --prompt INPUT`: one output for INPUT (a file, or the input text
        itself when the input tokenizer does not read files), with the sample settings."""
        prompt = prompt.strip()
        if not prompt:
            raise UserError("seq2seq: give the input as the prompt (--prompt FILE, or the text itself for a text input)")
        g = torch.Generator().manual_seed(cfg.seed)
        segments = self.encoder_segments(self.prompt_values(prompt), name=prompt)
        return self.transcribe(model, segments, cfg, use_cache, g)

    @decoding_threads()
    def sample(self, model, cfg: SampleConfig) -> list[str]:
        """End-of-run samples: validation examples, their reference and decoded outputs."""
        g = torch.Generator().manual_seed(cfg.seed)
        out = []
        for values, ids in self.items("val")[: cfg.num_samples]:
            got = self.transcribe(model, self.encoder_segments(values), cfg, generator=g)
            out.append(f"input: {describe_value(values[0])}\nreference: {self.decode(ids)}\ndecoded: {got}")
        return out

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def split_loss(self, model, items: list) -> float:
        """Teacher-forced cross-entropy per target token (EOS included, no label smoothing)."""
        total, count = 0.0, 0
        for chunk in chunks(items, self.config.eval_batch_size, desc="teacher-forced loss"):
            losses, counts = self.token_losses(model.core, self.collate(chunk).to(model.device))
            total += float(losses[counts].sum())
            count += int(counts.sum())
        return total / max(count, 1)

    @decoding_threads()
    def evaluate(self, model, split: str, limit: int | None, options: Seq2SeqEvalOptions) -> dict:
        """Loss, character error rate and exact-match rate on a split (or its first `limit`
        batches of `eval_batch_size` examples), and exact-match by `group_by` value."""
        items = self.items(split)
        if limit is not None:
            items = items[: limit * self.config.eval_batch_size]
        cfg = replace(self.ctx.sample, greedy=True) if options.greedy else self.ctx.sample
        g = torch.Generator().manual_seed(cfg.seed)
        edits = chars = 0
        hits = []
        for values, ids in progress(items, f"decoding {split}", total=len(items), unit="examples"):
            ref = self.decode(ids)
            hyp = self.transcribe(model, self.encoder_segments(values), cfg, generator=g)
            edits, chars = edits + edit_distance(ref, hyp), chars + len(ref)
            hits.append(hyp == ref)
        metrics = {"exact_match": sum(hits) / len(items), "cer": edits / max(chars, 1),
                   "loss": self.split_loss(model, items), "examples": len(items)}
        return metrics | self.grouped(split, hits)

    def grouped(self, split: str, hits: list[bool]) -> dict:
        """``exact_match[F=v]`` and ``examples[F=v]`` for each value v of the `group_by` field F
        over the first len(hits) examples of a split."""
        name = self.config.group_by
        if not name:
            return {}
        groups: dict[Any, list[bool]] = {}
        for ex, hit in zip(self.ctx.examples(split), hits):
            groups.setdefault(ex[name], []).append(hit)
        out = {}
        for value in sorted(groups, key=numbers_first):
            out[f"exact_match[{name}={value}]"] = sum(groups[value]) / len(groups[value])
            out[f"examples[{name}={value}]"] = len(groups[value])
        return out

    def metrics(self, model, split: str) -> dict[str, float]:
        """Greedy exact match and CER on the split's first `eval_batch_size` examples."""
        m = self.evaluate(model, split, 1, Seq2SeqEvalOptions())
        return {"exact_match": m["exact_match"], "cer": m["cer"]}

    # -- pictures ----------------------------------------------------------------------------
    @decoding_threads()
    def report(self, model, run_dir: Path) -> list[Path]:
        """A PNG of a few validation inputs as the input tokenizer decodes them (log-mel
        spectrograms for `mel`, images for `patches`), titled with reference and decoded outputs."""
        import numpy as np

        shown = []
        for values, ids in self.items("val")[: self.config.report_examples]:
            segments = self.encoder_segments(values)
            picture = np.asarray(self.ctx.tokenizers[self.inputs[0]].decode(segments[0]))
            if picture.ndim not in (2, 3) or picture.dtype == object:
                return []
            shown.append((picture, self.decode(ids), self.transcribe(model, segments)))
        if not shown:
            return []
        return [features_png(shown, run_dir / "val_transcriptions.png")]


def numbers_first(value: Any) -> tuple:
    """Sort key: numbers in numeric order, then anything else in text order."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (not number, value if number else str(value))


def describe_value(value: Any) -> str:
    """An input value for a text listing: a path or text as itself, an image or array by its shape."""
    if isinstance(value, (str, Path)):
        return str(value)
    shape = getattr(value, "size", None) if type(value).__module__.startswith("PIL.") else getattr(value, "shape", None)
    return f"{type(value).__name__} {tuple(shape)}" if shape is not None else type(value).__name__


def features_png(shown: list[tuple[Any, str, str]], path: Path) -> Path:
    """One panel per example, "reference -> decoded" above it: a (time, features) array as a
    spectrogram (time across), an image (rows, columns[, channels]) as itself."""
    images = shown[0][0].ndim == 3 or shown[0][0].dtype.kind in "ub"
    with figure(path, grid=(len(shown), 1), size=(4.5, 2.6 * len(shown)) if images else (8, 1.9 * len(shown))) as (fig, axes):
        for ax, (picture, ref, hyp) in zip(axes[:, 0], shown):
            if images:
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
                ax.axis("off")
            else:  # (frames, features): time along x
                ax.imshow(picture.T, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
                ax.set_ylabel("feature", fontsize=8)
                ax.set_xlabel("frame", fontsize=8)
            ax.set_title(f"reference {ref!r}  ->  decoded {hyp!r}", fontsize=9, color="black" if ref == hyp else "red")
    return path
