"""One model, many members: a mixture recipe made concrete.

Each member is an ordinary single-task `Pipeline` (its source, its task, its mask); members
that name the same modality share one tokenizer instance, fitted on all of their data, and so
one embedding table. One `Transformer` is built over every member's modalities; each member's
task sees it through `MaskedCore` (the member's mask on the shared stack) and keeps its own head.

`MixtureTask` is the task the training loop sees: a micro-batch comes from one member, drawn by
weight as a pure function of (seed, step, micro-step) -- the same on every process, so resume is
exact and a 2-process run follows the 1-process one -- and tagged with the member's name, which
routes its loss. Evaluation reports every member's metrics under its name (``lm/val_loss``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqmodel.capabilities import can
from seqmodel.data.pipeline import Pipeline, check_mask_modalities, first_losses
from seqmodel.data.prepare import fit_tokenizer
from seqmodel.errors import UserError
from seqmodel.model.config import SampleConfig
from seqmodel.model.lora import wrap
from seqmodel.model.transformer import MaskedCore, Transformer
from seqmodel.plugin import ModalitySpec
from seqmodel.recipe.schema import Recipe
from seqmodel.segments import TokenSet
from seqmodel.task import Slice, TrainModule

DRAW_BLOCK = 4096  # micro-steps whose members one generator draws at once


class MemberDraws:
    """Which member each micro-step trains on, and how many micro-steps that member had before it
    (its own step count, so each member's batches go through its data in order).

    Micro-step t = step * accum + micro falls in block t // DRAW_BLOCK, whose members are drawn
    by weight from a generator seeded by (seed, block): a pure function of (seed, step, micro)."""

    def __init__(self, weights: list[float], seed: int, accum: int) -> None:
        self.cumulative = np.cumsum(np.asarray(weights, dtype=np.float64)) / sum(weights)
        self.seed, self.accum = seed, accum
        self.blocks: list[np.ndarray] = []
        self.before: list[np.ndarray] = [np.zeros(len(weights), dtype=np.int64)]  # counts before each block

    def block(self, b: int) -> np.ndarray:
        while len(self.blocks) <= b:
            k = len(self.blocks)
            u = np.random.default_rng([self.seed, 0x6D69, k]).random(DRAW_BLOCK)
            drawn = np.minimum(np.searchsorted(self.cumulative, u, side="right"), len(self.cumulative) - 1)
            self.blocks.append(drawn)
            self.before.append(self.before[-1] + np.bincount(drawn, minlength=len(self.cumulative)))
        return self.blocks[b]

    def __call__(self, step: int, micro: int) -> tuple[int, int]:
        """(member index, that member's own micro-step index) of `micro` of optimizer step `step`."""
        t = step * self.accum + micro
        b, i = divmod(t, DRAW_BLOCK)
        drawn = self.block(b)
        member = int(drawn[i])
        return member, int(self.before[b][member] + np.count_nonzero(drawn[:i] == member))


class MixtureBatches:
    """The training stream (members drawn by weight) or an evaluation stream (members in turn),
    each batch the member's own, tagged with its name."""

    def __init__(self, names: list[str], streams: list, draws: MemberDraws | None) -> None:
        self.names, self.streams, self.draws = names, streams, draws

    def batch(self, where: Slice) -> TokenSet:
        if self.draws is not None:
            member, own = self.draws(where.step, where.micro)
        else:
            member, own = where.step % len(self.names), where.step // len(self.names)
        batch = self.streams[member].batch(Slice(own, 0, where.rank, where.size, where.global_size))
        batch.member = self.names[member]
        return batch


class MemberModule:
    """A member's view of the trained mixture: what its task's `evaluate`, `generate`, `sample`
    ... are given in place of a `TrainModule` (`core` under the member's mask, its own head)."""

    def __init__(self, module: TrainModule, core: MaskedCore, task, name: str) -> None:
        self.module, self.core, self.name = module, core, name
        self.head = module.head[name] if name in module.head else None
        self.loss_fn = task.loss

    def __call__(self, batch: TokenSet):
        return self.loss_fn(self.core, self.head, batch)

    @property
    def device(self) -> torch.device:
        return self.module.device

    def eval(self) -> MemberModule:
        self.module.eval()
        return self

    def train(self, mode: bool = True) -> MemberModule:
        self.module.train(mode)
        return self


class MixtureTask:
    """The task a mixture trains: each batch's loss is its member's (times its `loss_weight`)."""

    capabilities = ("metrics", "sample", "report", "state")
    loss_label = "nats/token"

    def __init__(self, mixture: MixturePipeline) -> None:
        self.mixture = mixture
        self.views: dict[str, MaskedCore] = {}

    def view(self, core: Transformer, name: str) -> MaskedCore:
        """The shared core under member `name`'s mask, with its own vocabularies (made once)."""
        if name not in self.views or self.views[name].core is not core:
            member = self.members[name]
            vocab = {s.name: s.vocab_size for s in member.model_specs()[0] if s.discrete}
            self.views[name] = MaskedCore(core, member.recipe.model, vocab)
        return self.views[name]

    @property
    def members(self) -> dict[str, Pipeline]:
        return self.mixture.members

    def setup(self, ctx) -> None:
        """Each member's task is set up by its own pipeline."""

    def outputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o for p in self.members.values() for o in p.task.outputs()))

    def build_head(self, d_model: int) -> nn.ModuleDict:
        heads = {name: p.task.build_head(d_model) for name, p in self.members.items()}
        return nn.ModuleDict({name: head for name, head in heads.items() if head is not None})

    def batches(self, split: str, train: bool) -> MixtureBatches:
        names = list(self.members)
        streams = [self.members[n].task.batches(split, train) for n in names]
        draws = None
        if train:
            r = self.mixture.recipe
            draws = MemberDraws([r.members[n].weight for n in names], r.train.seed, r.train.grad_accum)
        return MixtureBatches(names, streams, draws)

    def loss(self, core, heads, batch: TokenSet):
        if batch.member not in self.members:
            raise UserError(f"a batch of member {batch.member!r}, which this mixture does not have")
        loss, stats = self.members[batch.member].task.loss(self.view(core, batch.member),
                                                           heads[batch.member] if batch.member in heads else None, batch)
        return loss * self.mixture.recipe.members[batch.member].loss_weight, stats

    def member_module(self, module: TrainModule, name: str) -> MemberModule:
        return MemberModule(module, self.view(module.core, name), self.members[name].task, name)

    @torch.no_grad()
    def val_loss(self, module: TrainModule, name: str, batches: int) -> float:
        """A member's mean loss over its first `batches` validation batches (this process)."""
        member, view = self.members[name], self.member_module(module, name)
        stream, size = member.task.batches("val", False), member.recipe.train.batch_size
        total = 0.0
        for k in range(batches):
            loss, _ = view(stream.batch(Slice(k, 0, 0, size, size)).to(module.device))
            total += float(loss)
        return total / batches

    @property
    def metric_names(self) -> tuple[str, ...] | None:
        """The keys `metrics` returns (None when a member's task does not name its own)."""
        names = []
        for name, member in self.members.items():
            own = getattr(member.task, "metric_names", None) if can(member.task, "metrics") else ()
            if own is None:
                return None
            names += [f"{name}/val_loss", *(f"{name}/{k}" for k in own)]
        return tuple(names)

    def metrics(self, module: TrainModule, split: str) -> dict[str, float]:
        """Every member's validation loss and own metrics, under its name."""
        out = {}
        for name, member in self.members.items():
            out[f"{name}/val_loss"] = self.val_loss(module, name, member.recipe.train.eval_batches)
            if can(member.task, "metrics"):
                out |= {f"{name}/{k}": v for k, v in member.task.metrics(self.member_module(module, name), split).items()}
        return out

    def evaluate(self, module: TrainModule, split: str, limit: int | None, options) -> dict:
        return {f"{name}/{k}": v for name, member in self.members.items()
                for k, v in member.task.evaluate(self.member_module(module, name), split, limit, None).items()}

    def sample(self, module: TrainModule, cfg: SampleConfig) -> list[str]:
        return [f"[{name}] {text}" for name, member in self.members.items()
                if can(member.task, "sample") and member.recipe.sample.num_samples > 0
                for text in member.task.sample(self.member_module(module, name), member.recipe.sample)]

    def report(self, module: TrainModule, run_dir: Path) -> None:
        for name, member in self.members.items():
            if can(member.task, "report"):
                (run_dir / name).mkdir(exist_ok=True)
                member.task.report(self.member_module(module, name), run_dir / name)

    def save(self, directory: Path) -> None:
        for name, member in self.members.items():
            if can(member.task, "state"):
                (directory / name).mkdir(parents=True, exist_ok=True)
                member.task.save(directory / name)

    def load(self, directory: Path) -> None:
        """Each member's state is loaded by its own pipeline (`MixturePipeline.load`)."""


class MixturePipeline:
    """The pipeline of a mixture recipe: its members' pipelines, one model, one `MixtureTask`.

    Offers what the training loop, the run directory and the API use of a `Pipeline`."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.tokenizers = {m: b.cls(b.config, m) for m, b in recipe.tokenizers.items()}
        self.members = {name: Pipeline(member.recipe, self.tokenizers) for name, member in recipe.members.items()}
        self.task = MixtureTask(self)

    def users(self, modality: str) -> list[Pipeline]:
        return [p for p in self.members.values() if modality in p.tokenizers]

    def fit(self, states: Mapping[str, Path] | None = None) -> None:
        """Fit each shared tokenizer once on every member's training data that uses it."""
        for p in self.members.values():
            p.check_fields()
        if states is not None:
            self.load(states)
            return
        for m in self.tokenizers:
            fit_tokenizer(*[p.prepared.modalities[m] for p in self.users(m)])
        for p in self.members.values():
            p.setup_task()

    def load(self, tokenizers: Mapping[str, Path], task: Path | None = None) -> None:
        for name, p in self.members.items():
            own = task / name if task is not None and (task / name).is_dir() else None
            p.load({m: tokenizers[m] for m in p.tokenizers}, own)

    def update_schedule(self, train, sample) -> None:
        self.recipe.train = train
        for p in self.members.values():
            p.update_schedule(train, p.recipe.sample)

    def model_specs(self) -> tuple[list[ModalitySpec], tuple[str, ...]]:
        """Every member's modalities and output heads. Members agree on a shared modality, except
        that a task may add ids at the end of a vocabulary (seq2seq's start and end of text): the
        model's table has the largest, and each member sees its own (`MaskedCore`)."""
        specs: dict[str, tuple[str, ModalitySpec]] = {}
        for name, p in self.members.items():
            for spec in p.model_specs()[0]:
                first, known = specs.setdefault(spec.name, (name, spec))
                if replace(known, vocab_size=spec.vocab_size) != spec:
                    raise UserError(f"{self.recipe.path}: [mixture.{first}] and [mixture.{name}] give modality "
                                    f"{spec.name!r} different shapes ({describe(known)} vs {describe(spec)})")
                if spec.discrete and spec.vocab_size > known.vocab_size:
                    specs[spec.name] = (first, spec)
        return [s for _, s in specs.values()], self.task.outputs()

    def build_model(self) -> TrainModule:
        specs, outputs = self.model_specs()
        for p in self.members.values():
            check_mask_modalities(p.recipe, [s.name for s in specs])
        core = Transformer(self.recipe.model, specs, outputs=outputs)
        if self.recipe.train.lora.rank:
            wrap(core, self.recipe.train.lora, self.recipe.path)
        return TrainModule(core, self.task.build_head(self.recipe.model.d_model), self.task.loss)

    @cached_property
    def module(self) -> TrainModule:
        return self.build_model()

    def member(self, name: str | None) -> Pipeline | MixturePipeline:
        """The pipeline `--member NAME` works on: the member, its model the mixture's under its
        mask (None: the whole mixture)."""
        if name is None:
            return self
        if name not in self.members:
            raise UserError(f"--member: the mixture has no member {name!r} (it has: {', '.join(self.members)})")
        pipe = self.members[name]
        pipe.__dict__["module"] = self.task.member_module(self.module, name)
        return pipe

    def prepare(self, splits: Iterable[str] = ("train", "val")) -> list[dict]:
        return [row | {"member": name} for name, p in self.members.items() for row in p.prepare(splits)]

    def dry_run(self, examples: int = 2) -> dict[str, float]:
        """Each member's first train and val batch loss, without training."""
        module = self.module.eval()
        losses = {}
        for name, p in self.members.items():
            for split, loss in first_losses(self.task.member_module(module, name), p.task, examples).items():
                losses[f"{name}/{split}"] = loss
        return losses

    def evaluate(self, split: str = "val", limit: int | None = None, **options) -> dict:
        if options:
            raise UserError(f"eval --set {next(iter(options))}: a mixture's members take their own evaluation "
                            "options; name one with --member")
        return {f"{name}/{k}": v for name, p in self.members.items()
                for k, v in self.member(name).evaluate(split, limit).items()}


def describe(spec: ModalitySpec) -> str:
    kind = f"{spec.vocab_size} ids" if spec.discrete else f"width {spec.width}"
    return f"{kind}, {spec.position} positions" + (f" up to {spec.max_positions}" if spec.max_positions else "")


def pipeline_for(recipe: Recipe) -> Pipeline | MixturePipeline:
    """The pipeline of a recipe: a mixture's, or a single task's."""
    return MixturePipeline(recipe) if recipe.members else Pipeline(recipe)
