"""A recipe made concrete: source, tokenizers, task, model -- built fresh or loaded from a run.

A new run fits its tokenizers on the training split; a run directory holds everything needed to
rebuild the same pipeline (resolved recipe, tokenizer state, task state, weights), so `sample`,
`score`, `eval` and `--resume` need nothing else.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from torch import nn

from .errors import UserError
from .model import Transformer
from .recipe import Recipe, parse_recipe


class TrainModule(nn.Module):
    """The core model plus the task's head; `forward(batch)` is the task's loss, so wrappers
    such as DDP see every parameter used through one forward call."""

    def __init__(self, core: Transformer, head: nn.Module | None, task) -> None:
        super().__init__()
        self.core, self.head = core, head
        object.__setattr__(self, "task", task)

    def forward(self, batch):
        return self.task.loss(self.core, self.head, batch)


class Pipeline:
    """Source + tokenizers + task + model for one recipe.

    Attributes:
        recipe: the validated recipe.
        run_dir: where the run lives (None for a throwaway pipeline).
        tokenizers: modality -> tokenizer instance.
    """

    def __init__(self, recipe: Recipe, run_dir: Path | None = None) -> None:
        self.recipe, self.run_dir = recipe, run_dir
        self.tokenizers = {m: b.cls(b.config, m) for m, b in recipe.tokenizers.items()}
        self.fields = {m: b.field for m, b in recipe.tokenizers.items()}
        self.task = recipe.task.cls(recipe.task.config)
        self._examples: dict[str, object] = {}

    @cached_property
    def source(self):
        return self.recipe.data.cls(self.recipe.data.config)

    def examples(self, split: str):
        """The raw examples of a split (loaded once)."""
        if split not in self._examples:
            try:
                self._examples[split] = self.source.split(split)
            except UserError as err:
                where = self.recipe.path
                raise UserError(str(err) if str(err).startswith(where) else f"{where}: [data] {err}") from None
        return self._examples[split]

    def check_fields(self) -> None:
        have = tuple(getattr(self.source, "fields", ()))
        for m, fld in self.fields.items():
            if have and fld not in have:
                raise UserError(f"{self.recipe.path}: [tokenizers.{m}] field: the source "
                                f"{self.recipe.data.name!r} has no field {fld!r} (it has: {', '.join(have)})")

    def fit(self) -> None:
        """Fit every tokenizer on its field of the training split."""
        self.check_fields()
        train = self.examples("train")
        for m, tok in self.tokenizers.items():
            tok.fit(ex[self.fields[m]] for ex in train)
        self.task.setup(self)

    def build_model(self) -> TrainModule:
        specs = [tok.spec() for tok in self.tokenizers.values()]
        specs += list(getattr(self.task, "extra_specs", lambda: [])())
        core = Transformer(self.recipe.model, specs, outputs=self.task.outputs())
        head = self.task.build_head(self.recipe.model.d_model)
        return TrainModule(core, head, self.task)

    @cached_property
    def module(self) -> TrainModule:
        return self.build_model()

    # -- persistence ---------------------------------------------------------------------------
    def save(self, run_dir: Path) -> None:
        """Write the resolved recipe, tokenizer and task state into the run directory."""
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_text(run_dir / "recipe.json", json.dumps(self.recipe.resolved(), indent=2))
        for m, tok in self.tokenizers.items():
            d = run_dir / "tokenizers" / m
            d.mkdir(parents=True, exist_ok=True)
            tok.save(d)
        if hasattr(self.task, "save"):
            d = run_dir / "task"
            d.mkdir(exist_ok=True)
            self.task.save(d)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> Pipeline:
        """Rebuild the pipeline of a run directory (tokenizers loaded, not refitted)."""
        run_dir = Path(run_dir)
        path = run_dir / "recipe.json"
        if not path.is_file():
            raise UserError(f"{run_dir}: not a seqmodel run directory (no recipe.json)")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: corrupt run recipe: {err}") from None
        tables = raw.pop("tokenizers", {})
        raw["tokenizers"] = {m: {k: v for k, v in t.items()} | {"modality": m} for m, t in tables.items()}
        pipe = cls(parse_recipe(raw, str(path)), run_dir)
        for m, tok in pipe.tokenizers.items():
            tok.load(run_dir / "tokenizers" / m)
        if hasattr(pipe.task, "load") and (run_dir / "task").is_dir():
            pipe.task.load(run_dir / "task")
        pipe.task.setup(pipe)
        return pipe


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
