"""Sequence-to-sequence: encode some modalities, decode a discrete one with cross-attention.

Generic over modalities: the encoder side is any set of input modalities (mel slices, image
patches, text ...), concatenated into one token set for the encoder; the decoder side is one
discrete target modality (e.g. `char` over a "text" field), trained by teacher forcing.

Begin/end of sequence. Plain tokenizers such as `char` have no special ids, so the task wraps
the target tokenizer (`WithSpecials`, installed into the pipeline in `setup`) with two ids
appended to its vocabulary: BOS = V and EOS = V + 1. The tokenizer's own ids keep their
meaning (`seqmodel tokenize` is unchanged); only the model's target vocabulary grows by two,
and the inner tokenizer's saved state stays the same. The decoder reads [BOS, y1 .. yn] and
predicts [y1 .. yn, EOS].

Decoding is `seqmodel.generate.generate` with the encoder output as `context` (cross K/V
computed once, KV cache for self-attention), greedy or sampled. `evaluate` reports the
teacher-forced loss, the character error rate (Levenshtein distance over the reference length,
summed over the split) and the exact-match rate of the decoded strings.

References: Sutskever et al. 2014 (sequence to sequence); Vaswani et al. 2017 (encoder-decoder
Transformer); Radford et al. 2022 (Whisper: log-mel encoder, text decoder).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from seqmodel.errors import UserError
from seqmodel.generate import SampleConfig, choose_token, generate
from seqmodel.segments import Segment, TokenSet, collate
from seqmodel.task import EpochBatches

SPLIT_SALT = {"train": 0, "val": 1, "test": 2}


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


class WithSpecials:
    """A discrete tokenizer with BOS (= V) and EOS (= V + 1) appended to its vocabulary.

    Encoding is the inner tokenizer's (no specials added); decoding drops the specials. Saving
    and loading are the inner tokenizer's, so a run directory holds the plain tokenizer state.
    """

    def __init__(self, inner: Any) -> None:
        self.inner, self.modality = inner, inner.modality

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def bos(self) -> int:
        return self.inner.spec().vocab_size

    @property
    def eos(self) -> int:
        return self.bos + 1

    def spec(self):
        spec = self.inner.spec()
        return replace(spec, vocab_size=spec.vocab_size + 2)

    def fit(self, values) -> None:
        self.inner.fit(values)

    def encode(self, value: Any, *, train: bool = False) -> Segment:
        return self.inner.encode(value, train=train)

    def decode(self, segment: Segment) -> Any:
        ids = segment.ids[segment.ids < self.bos]
        return self.inner.decode(Segment(segment.modality, ids=ids))

    def piece(self, i: int) -> str:
        if i >= self.bos:
            return "<bos>" if i == self.bos else "<eos>"
        inner = getattr(self.inner, "piece", None)
        return inner(i) if inner else self.decode(Segment(self.modality, ids=torch.tensor([i])))

    def save(self, directory: Path) -> None:
        self.inner.save(directory)

    def load(self, directory: Path) -> None:
        self.inner.load(directory)


@dataclass
class Seq2SeqBatch:
    """A training batch: the encoder's token set and the decoder's (inputs, targets). A
    decoder-only model has no encoder set: its decoder set holds the inputs as a prefix."""

    encoder: TokenSet | None
    decoder: TokenSet

    def to(self, device: torch.device | str) -> Seq2SeqBatch:
        return Seq2SeqBatch(self.encoder.to(device) if self.encoder is not None else None, self.decoder.to(device))


class BucketedBatches(EpochBatches):
    """`EpochBatches` whose epoch order groups examples of similar length: the seeded
    permutation is cut into blocks of `block` examples, each sorted by length. Still a pure
    function of (seed, epoch), so resuming replays the same batches."""

    def __init__(self, items, collate_fn, seed: int, lengths: list[int], block: int) -> None:
        super().__init__(items, collate_fn, seed, shuffle=True)
        self.lengths, self.block = torch.tensor(lengths), block

    def perm(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            blocks = super().perm(epoch).split(self.block)
            self._perm = (epoch, torch.cat([b[torch.argsort(self.lengths[b], stable=True)] for b in blocks]))
        return self._perm[1]


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

    def __init__(self, config: Seq2SeqConfig) -> None:
        self.config = config
        self._items: dict[str, list] = {}

    # -- setup -------------------------------------------------------------------------------
    def setup(self, pipeline) -> None:
        """Pick the input and target modalities and wrap the target tokenizer with BOS/EOS."""
        arch = pipeline.recipe.model.arch
        if arch == "encoder":
            raise UserError("[model] arch: seq2seq needs \"encoder_decoder\" (cross-attention) or \"decoder\" "
                            "(inputs as a prefix of one stream, e.g. mask = \"prefix\"), got \"encoder\"")
        self.prefix = arch == "decoder"
        self.pipe = pipeline
        toks = pipeline.tokenizers
        self.target = self.config.target or self._default_target(toks)
        if self.target not in toks:
            raise UserError(f"[task] target: no tokenizer for {self.target!r} (have: {', '.join(toks)})")
        if not isinstance(toks[self.target], WithSpecials):
            if not toks[self.target].spec().discrete:
                raise UserError(f"[task] target: seq2seq decodes a discrete modality; {self.target!r} is continuous")
            toks[self.target] = WithSpecials(toks[self.target])
        self.tok = toks[self.target]
        self.inputs = list(self.config.inputs) or [m for m in toks if m != self.target]
        for m in self.inputs:
            if m not in toks or m == self.target:
                raise UserError(f"[task] inputs: {m!r} is not an input tokenizer "
                                f"(have: {', '.join(t for t in toks if t != self.target)})")
        if not self.inputs:
            raise UserError("[task] inputs: seq2seq needs at least one input tokenizer besides the target")
        self.fields = {m: pipeline.fields[m] for m in [*self.inputs, self.target]}
        self._seeded = {m: "generator" in inspect.signature(toks[m].encode).parameters for m in self.inputs}
        self.context = pipeline.recipe.model.context

    @staticmethod
    def _default_target(toks: dict) -> str:
        discrete = [m for m, t in toks.items() if isinstance(t, WithSpecials) or t.spec().discrete]
        if len(discrete) != 1:
            raise UserError(f"[task] target: name the decoder modality "
                            f"(discrete tokenizers: {', '.join(discrete) or 'none'})")
        return discrete[0]

    def outputs(self) -> tuple[str, ...]:
        return (self.target,)

    def build_head(self, d_model: int):
        return None

    # -- data --------------------------------------------------------------------------------
    def items(self, split: str) -> list[tuple[tuple, torch.Tensor]]:
        """(encoder input values, target ids) of every example of a split."""
        if split not in self._items:
            rows = []
            for ex in self.pipe.examples(split):
                ids = self.tok.encode(ex[self.fields[self.target]]).ids
                rows.append((tuple(ex[self.fields[m]] for m in self.inputs), ids))
            if not rows:
                raise UserError(f"[data] the {split} split has no examples")
            self._items[split] = rows
        return self._items[split]

    def encoder_segments(self, values: tuple, train: bool = False, generator: torch.Generator | None = None,
                         name: str = "") -> list[Segment]:
        """The encoder's segments of one example (one per input modality)."""
        segments = []
        for m, value in zip(self.inputs, values):
            tok = self.pipe.tokenizers[m]
            extra = {"generator": generator} if train and self._seeded[m] else {}
            segments.append(tok.encode(value, train=train, **extra))
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
        inputs = torch.cat([ids.new_tensor([self.tok.bos]), ids])
        return Segment(self.target, ids=inputs, targets=torch.cat([ids, ids.new_tensor([self.tok.eos])]))

    def collate(self, items: list, generator: torch.Generator | None = None, train: bool = False) -> Seq2SeqBatch:
        if self.prefix:  # one stream: the inputs, then [BOS, y1 .. yn]
            return Seq2SeqBatch(None, collate([[*self.encoder_segments(v, train, generator), self.decoder_segment(ids)]
                                               for v, ids in items]))
        encoder = collate([self.encoder_segments(v, train, generator) for v, _ in items])
        decoder = collate([[self.decoder_segment(ids)] for _, ids in items])
        return Seq2SeqBatch(encoder, decoder)

    def batches(self, split: str, train: bool) -> EpochBatches:
        seed = self.pipe.recipe.train.seed * 8 + SPLIT_SALT[split]
        items, fn = self.items(split), partial(self.collate, train=train)
        if train and self.config.bucket > 1:
            lengths = [sum(len(s) for s in self.encoder_segments(values)) for values, _ in items]
            return BucketedBatches(items, fn, seed, lengths, self.config.bucket * self.pipe.recipe.train.batch_size)
        return EpochBatches(items, fn, seed, shuffle=train)

    # -- loss --------------------------------------------------------------------------------
    def token_losses(self, model, batch: Seq2SeqBatch, smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cross-entropy (B, T) of the decoder's targets, and which tokens count."""
        hidden = model(batch.decoder, context=batch.encoder)  # (B, L, D)
        logits = model.output(self.target, hidden, batch.decoder).float()  # (B, T, V)
        inp = batch.decoder.inputs[self.target]
        counts = inp.valid & (inp.targets != -100)
        losses = F.cross_entropy(logits.transpose(1, 2), inp.targets, ignore_index=-100, reduction="none",
                                 label_smoothing=smoothing)
        return losses, counts

    def loss(self, model, head, batch: Seq2SeqBatch):
        losses, counts = self.token_losses(model, batch, self.config.label_smoothing)
        loss = losses.sum() / counts.sum().clamp(min=1)
        return loss, {"tokens": sum(int(ts.valid.sum()) for ts in (batch.encoder, batch.decoder) if ts is not None)}

    # -- decoding ----------------------------------------------------------------------------
    def _core(self, pipeline):
        return pipeline.module.core.eval()

    def transcribe(self, pipeline, segments: list[Segment], cfg: SampleConfig | None = None,
                   use_cache: bool = True, generator: torch.Generator | None = None) -> str:
        """Decode one example from its encoder segments: greedy when `cfg` is None or greedy."""
        core = self._core(pipeline)
        cfg = cfg or SampleConfig(greedy=True)
        limit = min(self.config.max_new_tokens or self.context - 1, self.context - 1)

        def choose(logits: torch.Tensor) -> int:
            logits = logits.clone()
            logits[self.tok.bos] = float("-inf")
            return choose_token(logits, cfg, generator)

        start = [Segment(self.target, ids=torch.tensor([self.tok.bos]))]
        if self.prefix:
            limit = min(limit, self.context - 1 - sum(len(s) for s in segments))
            out = generate(core, [*segments, *start], limit, choose, use_cache=use_cache, stop=lambda t: t == self.tok.eos)
        else:
            out = generate(core, start, limit, choose, context=segments, use_cache=use_cache,
                           stop=lambda t: t == self.tok.eos)
        return self.tok.decode(Segment(self.target, ids=torch.tensor(out, dtype=torch.long)))

    def read(self, path: str) -> tuple:
        """An input file as the encoder's values (the one input tokenizer reads it)."""
        if len(self.inputs) != 1:
            raise UserError(f"predict reads one file per example, but the task has {len(self.inputs)} inputs "
                            f"({', '.join(self.inputs)}); use the Python API")
        reader = getattr(self.pipe.tokenizers[self.inputs[0]], "read_file", None)
        return (reader(path) if reader is not None else path,)

    @decoding_threads()
    def predict(self, pipeline, inputs: list[str]) -> list[dict]:
        """Greedy transcriptions of input files: [{"file", "text"}, ...]."""
        return [{"file": str(p), "text": self.transcribe(pipeline, self.encoder_segments(self.read(p), name=str(p)))}
                for p in inputs]

    @decoding_threads()
    def generate(self, pipeline, prompt: str, cfg: SampleConfig, use_cache: bool = True) -> str:
        """`seqmodel sample RUN --prompt FILE`: one transcription of FILE, with the sample settings."""
        prompt = prompt.strip()
        if not prompt:
            raise UserError("seq2seq: give the input file to transcribe as the prompt (--prompt FILE)")
        g = torch.Generator().manual_seed(cfg.seed)
        segments = self.encoder_segments(self.read(prompt), name=prompt)
        return self.transcribe(pipeline, segments, cfg, use_cache, g)

    @decoding_threads()
    def sample(self, pipeline, cfg: SampleConfig) -> list[str]:
        """End-of-run samples: validation examples, their reference and decoded outputs."""
        g = torch.Generator().manual_seed(cfg.seed)
        out = []
        for values, ids in self.items("val")[: cfg.num_samples]:
            got = self.transcribe(pipeline, self.encoder_segments(values), cfg, generator=g)
            ref = self.tok.decode(Segment(self.target, ids=ids))
            out.append(f"input: {values[0]}\nreference: {ref}\ndecoded: {got}")
        return out

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def split_loss(self, pipeline, items: list) -> float:
        """Teacher-forced cross-entropy per target token (EOS included, no label smoothing)."""
        core = self._core(pipeline)
        device = next(core.parameters()).device
        total, count = 0.0, 0
        for i in range(0, len(items), self.config.eval_batch_size):
            batch = self.collate(items[i : i + self.config.eval_batch_size]).to(device)
            losses, counts = self.token_losses(core, batch)
            total += float(losses[counts].sum())
            count += int(counts.sum())
        return total / max(count, 1)

    @decoding_threads()
    def evaluate(self, pipeline, split: str, limit: int | None = None, greedy: bool = True, **options) -> dict:
        """Loss, character error rate and exact-match rate on a split.

        Args:
            limit: only the first `limit` batches of `eval_batch_size` examples.
            greedy: decode greedily (False: sample with the recipe's [sample] settings).
        """
        if options:
            raise UserError(f"task seq2seq has no eval option(s): {', '.join(sorted(options))}")
        items = self.items(split)
        if limit is not None:
            items = items[: max(1, limit) * self.config.eval_batch_size]
        cfg = replace(pipeline.recipe.sample, greedy=True) if greedy else pipeline.recipe.sample
        g = torch.Generator().manual_seed(cfg.seed)
        edits = chars = exact = 0
        for values, ids in items:
            ref = self.tok.decode(Segment(self.target, ids=ids))
            hyp = self.transcribe(pipeline, self.encoder_segments(values), cfg, generator=g)
            edits, chars, exact = edits + edit_distance(ref, hyp), chars + len(ref), exact + (hyp == ref)
        return {"exact_match": exact / len(items), "cer": edits / max(chars, 1),
                "loss": self.split_loss(pipeline, items), "examples": len(items)}

    # -- pictures ----------------------------------------------------------------------------
    @decoding_threads()
    def report(self, pipeline, run_dir: Path) -> list[Path]:
        """A PNG of a few validation inputs (as the input tokenizer decodes them: log-mel
        spectrograms for `mel`) titled with reference and decoded outputs."""
        import numpy as np

        shown = []
        for values, ids in self.items("val")[: self.config.report_examples]:
            segments = self.encoder_segments(values)
            picture = np.asarray(self.pipe.tokenizers[self.inputs[0]].decode(segments[0]))
            if picture.ndim != 2 or picture.dtype == object:
                return []
            shown.append((picture, self.tok.decode(Segment(self.target, ids=ids)), self.transcribe(pipeline, segments)))
        if not shown:
            return []
        return [features_png(shown, run_dir / "val_transcriptions.png")]


def features_png(shown: list[tuple[Any, str, str]], path: Path) -> Path:
    """One panel per example: the (time, features) array as an image, "reference -> decoded" above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 1.9 * len(shown)), dpi=110, squeeze=False)
    for ax, (picture, ref, hyp) in zip(axes[:, 0], shown):
        ax.imshow(picture.T, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
        ax.set_title(f"reference {ref!r}  ->  decoded {hyp!r}", fontsize=9, color="black" if ref == hyp else "red")
        ax.set_ylabel("feature", fontsize=8)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
