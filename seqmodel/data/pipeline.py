"""A recipe made concrete: source, tokenizers, task, model -- built fresh or loaded from a run.

A new run fits its tokenizers on the training split; a run directory holds everything needed to
rebuild the same pipeline (resolved recipe, tokenizer state, task state, weights), so `sample`,
`score`, `eval` and `--resume` need nothing else. The task sees only the `TaskContext` the
pipeline builds for it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path

import torch

from seqmodel import registry
from seqmodel.config import build
from seqmodel.data.prepare import ModalityData, Prepared, SourceData, fit_tokenizer
from seqmodel.data.store import open_store
from seqmodel.errors import UserError, cut
from seqmodel.masks import MaskSchedule
from seqmodel.model.lora import wrap
from seqmodel.model.transformer import Transformer
from seqmodel.plugin import ModalitySpec, declared
from seqmodel.recipe.schema import Recipe
from seqmodel.task import SPLITS, Slice, TaskContext, TrainModule, can


class Pipeline:
    """Source + tokenizers + task + model for one recipe.

    Attributes:
        recipe: the validated recipe.
        tokenizers: modality -> tokenizer instance.
        task: the task plugin instance (set up by `fit` or `load`).
        members: a mixture's member pipelines (`seqmodel.data.mixture`); none here.
    """

    members: dict = {}

    def __init__(self, recipe: Recipe, tokenizers: Mapping[str, object] | None = None) -> None:
        """`tokenizers`: instances to use for some modalities (shared with other mixture members)."""
        self.recipe = recipe
        given = tokenizers or {}
        self.tokenizers = {m: given[m] if m in given else b.cls(b.config, m) for m, b in recipe.tokenizers.items()}
        self.fields = {m: b.field for m, b in recipe.tokenizers.items()}
        self.task = recipe.task.cls(recipe.task.config)
        self._examples: dict[str, object] = {}

    @cached_property
    def source(self):
        return self.recipe.data.cls(self.recipe.data.config)

    def examples(self, split: str):
        """The raw examples of a split (loaded once)."""
        if split not in self._examples:
            self._examples[split] = self.from_source(self.source.split, split)
        return self._examples[split]

    def from_source(self, method, *args):
        """`method(*args)` of the source, its one-line errors naming the recipe's [data] table."""
        try:
            return method(*args)
        except UserError as err:
            where = self.recipe.path
            raise UserError(str(err) if str(err).startswith(where) else f"{where}: [data] {err}") from None

    def check_fields(self) -> None:
        have = tuple(self.source.fields)
        for m, fld in self.fields.items():
            if have and fld not in have:
                raise UserError(f"{self.recipe.path}: [tokenizers.{m}] field: the source "
                                f"{self.recipe.data.name!r} has no field {fld!r} (it has: {', '.join(have)})")

    @cached_property
    def plugins(self) -> dict[str, str]:
        """modality -> its tokenizer plugin described (name, entry point, distribution), for messages."""
        return {m: registry.describe("tokenizer", b.name) for m, b in self.recipe.tokenizers.items()}

    def context(self) -> TaskContext:
        """What the task sees of this recipe."""
        r = self.recipe
        info = self.source.info if "info" in declared(self.source) else dict
        plugins = self.plugins
        return TaskContext(tokenizers=dict(self.tokenizers), fields=dict(self.fields), model=r.model, seed=r.train.seed,
                           batch_size=r.train.batch_size, sample=r.sample, examples=self.examples,
                           source_fields=tuple(self.source.fields), info=info, eval_batches=r.train.eval_batches,
                           where=r.path, plugins=plugins, prepared=self.prepared)

    @cached_property
    def source_data(self) -> SourceData:
        """What preparation reads of the source (its identity asked once)."""
        return SourceData(self.source, self.recipe.data.name, self.examples, self.from_source)

    @cached_property
    def prepared(self) -> Prepared:
        """The split streams' prepared stores, given what each modality's preparation needs."""
        r = self.recipe
        return Prepared({m: ModalityData(m, self.fields[m], tok, r.tokenizers[m].name, r.tokenizers[m].config,
                                         self.source_data, r.path, self.plugins[m])
                         for m, tok in self.tokenizers.items()})

    def prepare(self, splits: Iterable[str] = ("train", "val")) -> list[dict]:
        """Everything `run` would prepare for these splits (the pipeline is fitted): one row per
        store this process built or found (`seqmodel prepare`)."""
        for split in splits:
            self.task.batches(split, split == "train")
        rows = []
        for (modality, split), folder in self.prepared.opened.items():
            stream = open_store(folder)
            rows.append({"split": split, "modality": modality, "folder": str(folder), "tokens": len(stream),
                         "dtype": stream.ids.dtype.name, "built": any(r["folder"] == str(folder) for r in self.prepared.built)})
        return rows

    def fit(self, states: Mapping[str, Path] | None = None) -> None:
        """Fit every tokenizer on its field of the training split (or reuse the state an earlier fit
        on the same data left, `seqmodel.data.prepare`; or load each one's saved state from
        `states`, modality -> directory: a warm start), then set up the task."""
        self.check_fields()
        if states is not None:
            self.load(states)
            return
        for m in self.tokenizers:
            try:
                fit_tokenizer(self.prepared.modalities[m])
            except UserError:
                raise
            except Exception as err:  # e.g. a tokenizer fed a field of the wrong kind
                raise UserError(f"{self.recipe.path}: [tokenizers.{m}] {registry.describe('tokenizer', self.recipe.tokenizers[m].name)}"
                                f" could not fit on field {self.fields[m]!r}: {type(err).__name__}: {cut(err, 300)}") from err
        self.setup_task()

    def load(self, tokenizers: Mapping[str, Path], task: Path | None = None) -> None:
        """Load each tokenizer's saved state (modality -> directory) and the task's, instead of
        fitting, then set up the task; a damaged state is a one-line error naming the plugin."""
        for m, tok in self.tokenizers.items():
            _load_state(tok, tokenizers[m], registry.describe("tokenizer", self.recipe.tokenizers[m].name))
        if task is not None and can(self.task, "state"):
            _load_state(self.task, task, registry.describe("task", self.recipe.task.name))
        self.setup_task()

    def setup_task(self) -> None:
        """Give the task its context (after the tokenizers are fitted or loaded)."""
        self.task.setup(self.context())

    def update_schedule(self, train, sample) -> None:
        """New `[train]` and `[sample]` values (a resume that changes them); the task sees them."""
        self.recipe.train, self.recipe.sample = train, sample
        self.setup_task()

    def model_specs(self) -> tuple[list[ModalitySpec], tuple[str, ...]]:
        """The modality specs and output heads the model is built with."""
        specs = {m: tok.spec() for m, tok in self.tokenizers.items()}
        specs = self.task.model_specs(specs) if can(self.task, "modalities") else list(specs.values())
        return specs, tuple(self.task.outputs())

    def build_model(self) -> TrainModule:
        specs, outputs = self.model_specs()
        check_mask_modalities(self.recipe, [s.name for s in specs])
        core = Transformer(self.recipe.model, specs, outputs=outputs)
        if self.recipe.train.lora.rank:
            wrap(core, self.recipe.train.lora, self.recipe.path)
        head = self.task.build_head(self.recipe.model.d_model)
        return TrainModule(core, head, self.task.loss)

    @cached_property
    def module(self) -> TrainModule:
        return self.build_model()

    def dry_run(self, examples: int = 2) -> dict[str, float]:
        """The loss of a first small batch of the train and val splits, without training: what
        `seqmodel check` runs so that data and tokenizer problems surface before a run."""
        return first_losses(self.module.eval(), self.task, examples)

    def eval_options(self, options: dict):
        """The task's `EvalOptions` from ``{key: value}`` (one-line errors naming the key)."""
        if can(self.task, "eval_options"):
            return build(self.task.EvalOptions, options, "eval --set")
        if options:
            raise UserError(f"eval --set {next(iter(options))}: the {self.recipe.task.name!r} task takes "
                            "no evaluation options")
        return None

    def evaluate(self, split: str = "val", limit: int | None = None, **options) -> dict:
        """The task's metrics of the model on a split (its first `limit` batches); `options` are
        the task's evaluation options."""
        if split not in SPLITS:
            raise UserError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
        if limit is not None and limit < 1:
            raise UserError(f"--limit: expected at least 1 batch, got {limit}")
        if split == "test" and self.context().source_info.get("test_is_val"):
            print(f"seqmodel: note: the {self.recipe.data.name!r} source has no test split of its own; "
                  "its test split is the validation split", file=sys.stderr)
        return self.task.evaluate(self.module.eval(), split, limit, self.eval_options(options))


def check_mask_modalities(recipe: Recipe, modalities: list[str]) -> None:
    """Every modality a mask rule names must be one the model has (else the rule silently matches nothing)."""
    m = recipe.model
    for key, schedule in (("mask", MaskSchedule.parse(m.mask, m.layer_masks)),
                          ("encoder_mask", MaskSchedule.parse(m.encoder_mask))):
        if key == "encoder_mask" and m.arch != "encoder_decoder":
            continue
        for mask in schedule.masks:
            unknown = sorted(mask.modality_names() - set(modalities))
            if unknown:
                key_name = "layer_masks" if key == "mask" and m.layer_masks else key
                raise UserError(f"{recipe.path}: [model] {key_name}: {str(mask)!r} names modality "
                                f"{unknown[0]!r}, which the model does not have (it has: {', '.join(modalities)})")


def _load_state(plugin, directory: Path, who: str) -> None:
    """`plugin.load(directory)`; a damaged state file is a one-line error naming the plugin."""
    try:
        plugin.load(directory)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 -- whatever a plugin's reader raises on a damaged file
        raise UserError(f"{directory}: damaged state of {who}: {type(err).__name__}: {cut(err, 160)}") from None


@torch.no_grad()
def first_losses(module, task, examples: int = 2) -> dict[str, float]:
    """`module`'s loss on a first small batch of the train and of the val split of `task`."""
    losses = {}
    for split, train in (("train", True), ("val", False)):
        batch = task.batches(split, train).batch(Slice(0, 0, 0, examples, examples))
        loss, _ = module(batch.to(module.device))
        losses[split] = float(loss)
    return losses
