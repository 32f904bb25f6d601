"""Preparation: each tokenizer fitted, and each split tokenized, once per data, tokenizer and
plugin version; every later run, eval, resume and process reuses it.

Two things are kept under `store.prepared_root()`:

- ``fits/<key>/``: a tokenizer's fitted state, keyed by the source's identity, the tokenizer
  plugin (name, distribution version, code), its config (and the content of files it names), the
  field and the modality. A new run on the same data loads it instead of fitting again.
- ``streams/<key>/``: a split's id stream (see `seqmodel.store`), keyed by the source's identity,
  the tokenizer's fitted state, both plugins (distribution version and code), the field, the
  modality and the split. A changed corpus or tokenizer is a new key, so an old store is never
  read for a new recipe.

The ids of a store are those `TaskContext.stream` gives in memory: the same documents in the same
order, the tokenizer's separator between them. Sources and tokenizers that both declare "parts"
stream long values piece by piece (`seqmodel.plugin.Parts`); other values are encoded one at a
time through the plugin boundary checks of `TaskContext.encode`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqmodel import registry
from seqmodel._version import __version__
from seqmodel.data import store
from seqmodel.errors import UserError
from seqmodel.plugin import ModalitySpec, Parts, declared, segment_problem
from seqmodel.segments import Segment

if TYPE_CHECKING:
    from seqmodel.data.pipeline import Pipeline
    from seqmodel.task import TaskContext

KEY_FORMAT = 1
PROGRESS_TOKENS = 1 << 24  # a resumable preparation records where it is after about this many tokens
_HASHED_FILE_BYTES = 1 << 26  # config files up to this size are hashed by content, larger ones by size and time


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str) -> None:
    if is_main_process():
        print(f"seqmodel: {message}", file=sys.stderr)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_digest(obj: Any) -> str:
    """sha256 of the file defining `obj`'s class: an edited plugin of an editable install is a new key."""
    try:
        return hashlib.sha256(Path(inspect.getfile(type(obj))).read_bytes()).hexdigest()
    except (OSError, TypeError):
        return ""


def plugin_key(kind: str, name: str, obj: Any) -> dict:
    distribution, version = registry.plugin_version(kind, name)
    return {"kind": kind, "name": name, "distribution": distribution, "version": version, "code": code_digest(obj)}


def state_digest(tokenizer: Any) -> str:
    """sha256 of a tokenizer's saved state (every file `save` writes)."""
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        for f in sorted(Path(tmp).rglob("*")):
            if f.is_file():
                h.update(f.relative_to(tmp).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def config_files(config: Any) -> dict[str, str]:
    """path -> content digest of every file a config names (a pretrained tokenizer.json ...)."""
    found = {}
    values = dataclasses.asdict(config).values() if dataclasses.is_dataclass(config) else ()
    for value in values:
        for text in value if isinstance(value, list) else [value]:
            path = Path(text).expanduser() if isinstance(text, str) and text else None
            if path is not None and path.is_file():
                st = path.stat()
                found[text] = (hashlib.sha256(path.read_bytes()).hexdigest() if st.st_size <= _HASHED_FILE_BYTES
                               else f"{st.st_size}:{st.st_mtime_ns}")
    return found


# -- fitting -----------------------------------------------------------------------------------
def source_parts(source: Any, tokenizer: Any, split: str, field: str) -> Parts | None:
    """A split's values of `field` in parts, when the source and the tokenizer both read them so."""
    if "parts" in declared(source) and "parts" in declared(tokenizer):
        return source.parts(split, field)
    return None


def training_values(pipe: Pipeline, modality: str) -> Iterable[Any]:
    """What a tokenizer fits on: the training split's values of its field (in parts where it can)."""
    field = pipe.fields[modality]
    parts = pipe.from_source(source_parts, pipe.source, pipe.tokenizers[modality], "train", field)
    if parts is not None:
        return (part for document in parts.documents for part in document)
    return (ex[field] for ex in pipe.examples("train"))


def _config(config: Any) -> Any:
    """A tokenizer's validated recipe config, for a key."""
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config)


def fit_key(pipe: Pipeline, modality: str, identity: dict) -> str:
    r, tok = pipe.recipe, pipe.tokenizers[modality]
    binding = r.tokenizers[modality]
    return digest({"what": "fit", "format": KEY_FORMAT, "seqmodel": __version__, "source": identity,
                   "source_plugin": plugin_key("source", r.data.name, pipe.source),
                   "tokenizer_plugin": plugin_key("tokenizer", binding.name, tok), "config": _config(binding.config),
                   "config_files": config_files(binding.config), "field": pipe.fields[modality], "modality": modality})


def fit_tokenizer(pipe: Pipeline, modality: str, identity: dict) -> None:
    """Fit a tokenizer on the training split, or load the state an earlier fit on the same data left."""
    tok = pipe.tokenizers[modality]
    folder = store.prepared_root() / "fits" / fit_key(pipe, modality, identity)
    with store.locked(folder):
        if store.is_complete(folder):
            try:
                tok.load(folder)
                say(f"{pipe.recipe.tokenizers[modality].name} tokenizer ({modality}): fitted state reused from {folder}")
                return
            except UserError as err:
                say(f"the fitted state in {folder} is damaged ({err}); fitting again")
        tok.fit(training_values(pipe, modality))
        store.remove_leftovers(folder)
        with store.new_folder(folder) as tmp:
            tok.save(tmp)


# -- streams -----------------------------------------------------------------------------------
class Prepared:
    """``(modality, split) -> TokenStream`` for a pipeline: its prepared store, mapped, after
    building it when it is missing or damaged (what `TaskContext.stream` asks)."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.built: list[dict] = []  # what this process prepared (for `seqmodel prepare`)
        self.opened: dict[tuple[str, str], Path] = {}

    @cached_property
    def identity(self) -> dict:
        return self.pipe.from_source(self.pipe.source.identity)

    @cached_property
    def test_is_val(self) -> bool:
        source = self.pipe.source
        return "info" in declared(source) and bool(source.info().get("test_is_val"))

    def key(self, modality: str, split: str) -> str:
        r, tok = self.pipe.recipe, self.pipe.tokenizers[modality]
        return digest({"what": "stream", "format": KEY_FORMAT, "store_format": store.FORMAT, "seqmodel": __version__,
                       "source": self.identity, "source_plugin": plugin_key("source", r.data.name, self.pipe.source),
                       "tokenizer_plugin": plugin_key("tokenizer", r.tokenizers[modality].name, tok),
                       "tokenizer_config": _config(r.tokenizers[modality].config), "tokenizer_state": state_digest(tok),
                       "field": self.pipe.fields[modality],
                       "modality": modality, "split": split})

    def folder(self, modality: str, split: str) -> Path:
        return store.prepared_root() / "streams" / self.key(modality, split)

    def __call__(self, modality: str, split: str) -> store.TokenStream:
        if split == "test" and self.test_is_val:
            split = "val"  # one store for both
        folder = self.folder(modality, split)
        with store.locked(folder):
            try:
                stream = store.open_store(folder)
            except store.Damaged as why:
                if folder.exists():
                    say(f"prepared store {folder} is damaged: {why}; rebuilding it")
                self.build(folder, modality, split)
                stream = store.open_store(folder)
        self.opened[modality, split] = folder
        return stream

    def build(self, folder: Path, modality: str, split: str) -> None:
        ctx, pipe = self.pipe.context(), self.pipe
        tok = ctx.tokenizers[modality]
        store.remove_leftovers(folder)
        if folder.exists():
            shutil.rmtree(folder)
        what = {"source": pipe.recipe.data.name, "split": split, "modality": modality, "field": ctx.fields[modality],
                "tokenizer": pipe.recipe.tokenizers[modality].name, "recipe": pipe.recipe.path}
        parts = pipe.from_source(source_parts, pipe.source, tok, split, ctx.fields[modality])
        resumable = parts is None and "resume" in declared(pipe.source) and pipe.source.resumable(split)
        writer = store.StoreWriter(folder, store.id_dtype(tok.spec().vocab_size), what, partial=resumable)
        t0 = time.perf_counter()
        try:
            with progress_bar(parts, pipe, split, len(writer.offsets)) as bar:
                read = write_stream(ctx, modality, self.documents(split, parts, writer), parts is not None, writer, bar)
            seconds = time.perf_counter() - t0
            writer.commit({"seconds": round(seconds, 3), "source_bytes": read})
        except KeyboardInterrupt:
            writer.close() if resumable else writer.abort()  # Ctrl-C: a partial store continues next time
            raise
        except BaseException:
            writer.abort()
            raise
        row = {"split": split, "modality": modality, "tokens": writer.tokens, "dtype": writer.dtype.name,
               "bytes": writer.tokens * writer.dtype.itemsize, "source_bytes": read, "seconds": seconds, "folder": str(folder)}
        self.built.append(row)
        rate = f", {read / max(seconds, 1e-9) / 1e6:,.1f} MB/s" if read else ""
        say(f"prepared the {split} split ({modality}): {writer.tokens:,} tokens ({writer.dtype.name}, "
            f"{row['bytes'] / 1e6:,.1f} MB) in {seconds:.1f} s{rate} -> {folder}")

    def documents(self, split: str, parts: Parts | None, writer: store.StoreWriter) -> Iterator[Any]:
        """What a split's stream is made of: documents in parts, or the field values; a resumable
        source's values continue after what a partial store holds, recording where they are."""
        if parts is not None:
            return iter(parts.documents)
        modality = writer.what["modality"]
        examples, field = self.pipe.examples(split), self.pipe.fields[modality]
        if not writer.partial:
            return (ex[field] for ex in examples)
        if writer.progress is not None:
            examples.load_state_dict(writer.progress)
            say(f"continuing the preparation of the {split} split after {len(writer.offsets):,} examples "
                f"({writer.tokens:,} tokens)")
        return self._recorded(examples, field, writer)

    @staticmethod
    def _recorded(examples, field: str, writer: store.StoreWriter) -> Iterator[Any]:
        last = writer.tokens
        for ex in examples:
            yield ex[field]
            if writer.tokens - last >= PROGRESS_TOKENS:  # asked for the next one: `ex` is written
                writer.save_progress(examples.state_dict())
                last = writer.tokens


def write_stream(ctx: TaskContext, modality: str, documents: Iterable[Any], in_parts: bool,
                 writer: store.StoreWriter, bar) -> int:
    """Write a split's id stream after what `writer` holds (documents in order, the separator
    between them); returns the bytes of text read (0 when the values were not read in parts)."""
    tok = ctx.tokenizers[modality]
    eot = tok.eot_id if "separator" in declared(tok) else None
    separator = np.array([eot]) if eot is not None else None
    spec, who = tok.spec(), ctx.plugins.get(modality, f"the tokenizer of {modality!r}")
    counter = _Counter(bar)
    for i, document in enumerate(documents, len(writer.offsets)):
        if i and separator is not None:
            writer.append(separator)
        writer.start_document()
        if not in_parts:
            writer.append(ctx.encode(modality, document, stream=True).ids.numpy())
            bar.update(1)
            continue
        try:
            for ids in tok.encode_parts(counter.count(document)):
                writer.append(checked(ids, spec, who))
        except UserError:
            raise
        except Exception as err:  # a plugin's failure names the plugin (as `TaskContext.encode` does)
            raise UserError(f"{who}: encode failed: {type(err).__name__}: {err}") from err
    return counter.bytes


def checked(ids: np.ndarray | Segment, spec: ModalitySpec, who: str) -> np.ndarray:
    """The plugin boundary for parts (as `TaskContext.encode` checks a value's segment): a 1-D
    integer array of ids inside the vocabulary, or a segment that fits the spec."""
    if isinstance(ids, Segment):
        problem = segment_problem(ids, spec)
        if problem:
            raise UserError(f"{who}: encode gave a segment that does not fit: {problem}")
        return ids.ids.numpy()
    if not isinstance(ids, np.ndarray) or not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 1:
        raise UserError(f"{who}: encode_parts gave {type(ids).__name__} {getattr(ids, 'shape', '')}, not a 1-D array "
                        "of integer ids")
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= spec.vocab_size):
        raise UserError(f"{who}: encode_parts gave ids spanning [{int(ids.min())}, {int(ids.max())}], outside "
                        f"[0, vocab_size={spec.vocab_size})")
    return ids


class _Counter:
    """Counts the bytes of text parts as the tokenizer reads them, advancing the progress bar."""

    def __init__(self, bar) -> None:
        self.bar, self.bytes = bar, 0

    def count(self, parts: Iterable[Any]) -> Iterator[Any]:
        for part in parts:
            n = (len(part) if part.isascii() else len(part.encode("utf-8"))) if isinstance(part, str) else len(part)
            self.bytes += n
            self.bar.update(n)
            yield part


def progress_bar(parts: Parts | None, pipe: Pipeline, split: str, done: int = 0):
    """A progress bar on stderr: bytes (MB/s, ETA) for parts, examples otherwise; shown on a
    terminal, by the main process."""
    from tqdm.auto import tqdm

    if parts is not None:
        return tqdm(total=parts.nbytes, unit="B", unit_scale=True, desc=f"prepare {split}", file=sys.stderr,
                    dynamic_ncols=True, mininterval=0.5, disable=None if is_main_process() else True)
    examples = pipe.examples(split)
    total = len(examples) if hasattr(examples, "__len__") else None
    return tqdm(total=total, initial=done, unit=" examples", desc=f"prepare {split}", file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, disable=None if is_main_process() else True)


# -- `seqmodel prepare` --------------------------------------------------------------------------
def prepare(pipe: Pipeline, splits: Iterable[str] = ("train", "val")) -> list[dict]:
    """Everything `run` would prepare for these splits (the pipeline is fitted): returns one row
    per store this process built or found."""
    for split in splits:
        pipe.task.batches(split, split == "train")
    prepared, rows = pipe.prepared, []
    for (modality, split), folder in prepared.opened.items():
        stream = store.open_store(folder)
        rows.append({"split": split, "modality": modality, "folder": str(folder), "tokens": len(stream),
                     "dtype": stream.ids.dtype.name, "built": any(r["folder"] == str(folder) for r in prepared.built)})
    return rows
