"""The task contract, and the scaffolding every task shares.

A task plugin turns a split's examples into training batches and a loss, and evaluates a trained
model. It never sees the pipeline: `setup` hands it a `TaskContext` (the recipe's tokenizers and
fields, the examples of each split, the model settings, the seed), and every method that needs the
model is given a `TrainModule` in eval mode. Whatever else a task can do -- generate, score,
predict on files, write samples or pictures, keep state in the run directory, add modalities, take
evaluation options -- it declares in ``capabilities``; the registry checks each declaration at
load (see `CAPABILITIES`) and the core asks the declaration, never the object.

Batches are a pure function of (seed, split, step, micro-step, process rank): `EpochBatches`
(permutations of a map-style split) and `RandomBatches` (random indices, e.g. window starts), so a
resumed run replays exactly the data the uninterrupted run would have seen, on any number of
processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from seqmodel.capabilities import SPLITS, TASK_CAPABILITIES, can  # noqa: F401 (plugins import SPLITS from here)
from seqmodel.errors import UserError
from seqmodel.plugin import ModalitySpec, segment_problem, separator_id
from seqmodel.progress import progress
from seqmodel.segments import Segment, TokenSet

if TYPE_CHECKING:
    from seqmodel.model.config import ModelConfig, SampleConfig
    from seqmodel.model.transformer import Transformer



class IdStream(Protocol):
    """A split's ids as one stream (`TaskContext.stream`): an int64 tensor, or a prepared store
    mapped from disk (`seqmodel.data.store.TokenStream`); both index alike."""

    def __len__(self) -> int: ...

    def __getitem__(self, index) -> Tensor: ...


# -- the contract ----------------------------------------------------------------------------
class Task(Protocol):
    """What every task plugin provides (a class with a `Config` dataclass; ``cls(config)``)."""

    def setup(self, ctx: TaskContext) -> None:
        """Bind to the recipe; called once tokenizers are fitted or loaded, before the model is built."""

    def outputs(self) -> tuple[str, ...]:
        """Modalities whose output head the loss uses."""

    def build_head(self, d_model: int) -> nn.Module | None:
        """Extra trainable modules (a classifier ...), or None."""

    def batches(self, split: str, train: bool) -> BatchStream:
        """Step-indexed batches of a split (train=True: augmentation and shuffling)."""

    def loss(self, core: Transformer, head: nn.Module | None, batch: TokenSet) -> tuple[Tensor, dict]:
        """(scalar loss, stats) of a batch; stats may hold "tokens" (counted for tokens/s) and,
        for a loss that is a mean over a varying number of terms (target tokens), "targets": that
        number, so that several processes weigh every term alike."""

    def evaluate(self, model: TrainModule, split: str, limit: int | None, options: Any) -> dict:
        """Metrics on a split (`limit` caps the batches; `options` is an `EvalOptions` or None)."""


class Generates(Protocol):
    def generate(self, model: TrainModule, prompt: str, cfg: SampleConfig, use_cache: bool = True) -> str:
        """One output for a prompt (the task reads the prompt its own way)."""


class Scores(Protocol):
    def score(self, model: TrainModule, text: str) -> dict:
        """{"tokens": [{"token", "logprob"}, ...], summary metrics ...} of a text."""


class Predicts(Protocol):
    def predict(self, model: TrainModule, paths: list[str]) -> list[dict]:
        """One row (a dict) per input file."""


class Samples(Protocol):
    def sample(self, model: TrainModule, cfg: SampleConfig) -> list[str]:
        """End-of-run samples, written to samples.txt."""


class Reports(Protocol):
    def report(self, model: TrainModule, run_dir: Path) -> list[Path]:
        """End-of-run pictures and tables written into the run directory."""


class Measures(Protocol):
    """Optional besides: ``metric_names``, a tuple of the keys `metrics` returns, so that a
    `[train] keep_best` naming none of them is refused before training (without it, the names
    come from one call of `metrics` at `check` and at the start of a run)."""

    loss_label: str
    """What the loss is, for plots and logs: "cross-entropy (nats/token)"."""

    def metrics(self, model: TrainModule, split: str) -> dict[str, float]:
        """A few numbers worth tracking at every evaluation during training (accuracy, exact
        match, mean return ...); cheap: a few batches, `TaskContext.eval_batches` at most."""


class KeepsState(Protocol):
    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


class AddsModalities(Protocol):
    def model_specs(self, specs: dict[str, ModalitySpec]) -> list[ModalitySpec]:
        """The modalities the model is built with, given the tokenizers' (to add or widen some)."""


class Exports(Protocol):
    def export_outputs(self, core: Transformer, head: nn.Module | None, batch: TokenSet) -> dict[str, Tensor]:
        """Named outputs an exported graph adds to the core's (a classifier's logits ...)."""


class DescribesExports(Protocol):
    def export_info(self) -> dict[str, dict]:
        """JSON-able facts about the outputs `export_outputs` adds, by output name (the classes of a
        classifier's logits ...): an ONNX export writes them into signature.json."""


CAPABILITIES: dict[str, tuple[type, tuple[str, ...]]] = {
    name: (protocol, TASK_CAPABILITIES[name]) for name, protocol in (
        ("generate", Generates), ("score", Scores), ("predict", Predicts), ("sample", Samples), ("report", Reports),
        ("metrics", Measures), ("state", KeepsState), ("modalities", AddsModalities), ("export", Exports),
        ("export_info", DescribesExports), ("eval_options", object))}
"""Task capability -> (its Protocol, the members a class declaring it must have)."""


def encode_checked(tokenizer: Any, value: Any, who: str, context: int | None = None, train: bool = False,
                   generator: torch.Generator | None = None) -> Segment:
    """`value` tokenized, checked against the tokenizer's spec (the plugin boundary: a segment that
    does not fit the model is named here, not deep inside it; with `context`, 1-D positions must
    fit it). Tokenizers that declare "augment" get the step's generator when `train`; `who` names
    the plugin in errors."""
    try:
        if train and can(tokenizer, "augment"):
            seg = tokenizer.encode(value, train=True, generator=generator)
        else:
            seg = tokenizer.encode(value, train=train)
    except UserError:
        raise
    except Exception as err:  # a plugin's failure names the plugin, not a line deep inside it
        raise UserError(f"{who}: encode failed: {type(err).__name__}: {err}") from err
    problem = segment_problem(seg, tokenizer.spec(), context)
    if problem:
        raise UserError(f"{who}: encode gave a segment that does not fit: {problem}")
    return seg


def masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """The mean of `values` where `keep` is true: 0, not NaN, when nothing is kept (a batch whose
    targets are all masked, as a mixture member's can be, contributes no loss)."""
    return torch.where(keep, values, 0).sum() / keep.sum().clamp(min=1)


# -- what a task sees ------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskContext:
    """The narrow view of a recipe a task works with.

    Attributes:
        tokenizers: modality -> fitted (or loaded) tokenizer.
        fields: modality -> the source field its tokenizer reads.
        model: the `[model]` settings (arch, context, masks ...).
        seed: `[train] seed`; `split_seed` derives each split's.
        batch_size: `[train] batch_size` (examples per micro-step over all processes).
        eval_batches: `[train] eval_batches`, the budget of an evaluation during training.
        sample: the `[sample]` settings.
        source_fields: the fields every example of the source has.
        info: asks the source what it says about its data (`source_info`).
        examples: split name -> that split's raw examples (loaded once, lazily).
        where: the recipe's path, for error messages.
        plugins: modality -> "tokenizer plugin 'name' (distribution D V)", for error messages.
        prepared: (modality, split) -> that split's id stream from its prepared store
            (`seqmodel.data.prepare.Prepared`); None encodes streams in memory.
    """

    tokenizers: Mapping[str, Any]
    fields: Mapping[str, str]
    model: ModelConfig
    seed: int
    batch_size: int
    sample: SampleConfig
    examples: Callable[[str], Sequence[dict]]
    source_fields: tuple[str, ...] = ()
    info: Callable[[], Mapping[str, Any]] = dict
    eval_batches: int = 20
    where: str = "<recipe>"
    plugins: Mapping[str, str] = field(default_factory=dict)
    prepared: Callable[[str, str], Any] | None = None

    @cached_property
    def source_info(self) -> Mapping[str, Any]:
        """What the source says about its data ("label_names", "env_id" ...), asked on first use
        (a run reloaded for sampling need not open its data)."""
        return self.info()

    def split_seed(self, split: str) -> int:
        """The seed of a split's batch stream (distinct per split, fixed by `[train] seed`)."""
        return self.seed * 8 + SPLITS.index(split)

    def modality(self, configured: str, role: str = "input") -> str:
        """The modality a task works on: `configured` (its `[task] modality`), or the recipe's only
        tokenizer; a one-line error names what exists."""
        mods = list(self.tokenizers)
        if configured and configured not in self.tokenizers:
            raise UserError(f"{self.where}: [task] modality: no tokenizer for {configured!r} (have: {', '.join(mods)})")
        if not configured and len(mods) > 1:
            raise UserError(f"{self.where}: [task] modality: the recipe has several tokenizers ({', '.join(mods)}); "
                            f"name the {role}")
        return configured or mods[0]

    def values(self, modality: str, split: str) -> Iterator[Any]:
        """The field values of `modality`'s tokenizer over a split's examples."""
        name = self.fields[modality]
        return (ex[name] for ex in self.examples(split))

    def encode(self, modality: str, value: Any, train: bool = False, generator: torch.Generator | None = None,
               stream: bool = False) -> Segment:
        """`value` tokenized by `modality`'s tokenizer through `encode_checked`. A `stream` is cut
        into windows by the task, so its positions need not fit the model's context."""
        who = self.plugins.get(modality, f"the tokenizer of {modality!r}")
        return encode_checked(self.tokenizers[modality], value, who, None if stream else self.model.context, train,
                              generator)

    def stream(self, modality: str, split: str) -> IdStream:
        """A split's values of `modality` as one id stream, in document order, with the
        tokenizer's separator id between documents when it declares "separator": memory-mapped
        from its prepared store (a `TokenStream`, tokenized once for every run) when the pipeline
        gives one, else encoded here into an int64 tensor. Both index alike: ``len(s)``, and
        ``s[a:b]`` or ``s[index_tensor]`` give int64 tensors."""
        if self.prepared is not None:
            return self.prepared(modality, split)
        return self.encode_stream(modality, split)

    def encode_stream(self, modality: str, split: str) -> Tensor:
        """`stream` encoded in memory (the reference the prepared stores are built to equal)."""
        eot = separator_id(self.tokenizers[modality])
        parts = []
        for value in self.values(modality, split):
            if parts and eot is not None:
                parts.append(torch.tensor([eot]))
            parts.append(self.encode(modality, value, stream=True).ids)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def read_input(self, modality: str, path: str) -> Any:
        """An input file as `modality`'s tokenizer reads it (its `read_file`), else as UTF-8 text."""
        tok = self.tokenizers[modality]
        if can(tok, "read_file"):
            return tok.read_file(path)
        try:
            return Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: cannot read the input: {err}") from None


# -- the model a task is given ---------------------------------------------------------------
class TrainModule(nn.Module):
    """The core model plus the task's head. `forward(batch)` is the task's loss, so wrappers such
    as DDP see every parameter used in one forward call; evaluation and generation get this module
    in eval mode (`core`, `head`, `device`)."""

    def __init__(self, core: Transformer, head: nn.Module | None, loss: Callable) -> None:
        super().__init__()
        self.core, self.head, self.loss_fn = core, head, loss

    def forward(self, batch: TokenSet):
        return self.loss_fn(self.core, self.head, batch)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


# -- batch streams ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Slice:
    """Which part of the global batch this process draws: micro-step `micro` of optimizer step
    `step`, examples [rank * size, (rank + 1) * size) of `global_size`."""

    step: int
    micro: int
    rank: int
    size: int
    global_size: int
    accum: int = 1


class BatchStream(Protocol):
    def batch(self, where: Slice) -> TokenSet: ...


def random_generator(*keys: int) -> torch.Generator:
    """A generator seeded by a tuple of integers (seed, step, micro ...)."""
    g = torch.Generator()
    g.manual_seed(hash(tuple(keys)) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


class EpochBatches:
    """Map-style data: epochs of a seeded permutation; global example k of step s is
    ``perm_epoch[(s * accum * global_size + micro * global_size + k) % n]``. `collate(items,
    generator)` builds the batch; the generator (seeded by seed, step, micro, rank) drives augmentation."""

    def __init__(self, items: Sequence[Any], collate: Callable[[list[Any], torch.Generator], TokenSet], seed: int,
                 shuffle: bool = True):
        if len(items) == 0:
            raise UserError("no examples in this split")
        self.items, self.collate, self.seed, self.shuffle = items, collate, seed, shuffle
        self._perm: tuple[int, Tensor] | None = None

    def order(self, epoch: int) -> Tensor:
        """The example order of an epoch (subclasses may regroup it, e.g. by length)."""
        n = len(self.items)
        return torch.randperm(n, generator=random_generator(self.seed, epoch)) if self.shuffle else torch.arange(n)

    def perm(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, self.order(epoch))
        return self._perm[1]

    def indices(self, where: Slice) -> list[int]:
        n = len(self.items)
        start = (where.step * where.accum + where.micro) * where.global_size + where.rank * where.size
        return [int(self.perm(k // n)[k % n]) for k in range(start, start + where.size)]

    def batch(self, where: Slice) -> TokenSet:
        g = random_generator(self.seed, where.step, where.micro, where.rank, 1)
        return self.collate([self.items[i] for i in self.indices(where)], g)


class RandomBatches:
    """Indices drawn at random from [0, n): step s's global batch is `global_size` draws from a
    generator seeded by (seed, s, micro), each process taking its own slice; `build(indices)`
    turns them into a batch (window starts, window ends ...)."""

    def __init__(self, n: int, build: Callable[[Tensor], TokenSet], seed: int) -> None:
        if n < 1:
            raise UserError("no examples in this split")
        self.n, self.build, self.seed = n, build, seed

    def indices(self, where: Slice) -> Tensor:
        every = torch.randint(self.n, (where.global_size,), generator=random_generator(self.seed, where.step, where.micro))
        return every[where.rank * where.size : (where.rank + 1) * where.size]

    def batch(self, where: Slice) -> TokenSet:
        return self.build(self.indices(where))


# -- evaluation scaffolding ------------------------------------------------------------------
def chunks(items: Sequence[Any], size: int, limit: int | None = None, desc: str = "") -> Iterator[Sequence[Any]]:
    """`items` in consecutive chunks of `size` (the first `limit` chunks when given), with progress
    reported as `desc` when given."""
    stop = len(items) if limit is None else min(len(items), limit * size)
    parts = (items[i : min(i + size, stop)] for i in range(0, stop, size))
    return progress(parts, desc, total=-(-stop // size), unit="batches") if desc else parts


def per_split(build: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """Method decorator: compute a split's value once per task instance (tokenized items ...)."""
    name = f"_per_split_{build.__name__}"

    def cached(self, split: str):
        store = self.__dict__.setdefault(name, {})
        if split not in store:
            store[split] = build(self, split)
        return store[split]

    cached.__doc__, cached.__name__ = build.__doc__, build.__name__
    return cached
