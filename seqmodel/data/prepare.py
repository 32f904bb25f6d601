"""Preparation: each tokenizer fitted, and each split tokenized, once per data, tokenizer and
plugin version; every later run, eval, resume and process reuses it.

Two things are kept under `seqmodel.files.files.stores_root()`:

- ``fits/<key>/``: a tokenizer's fitted state, keyed by the source's identity, the tokenizer
  plugin (name, distribution version, code), its config (and the content of files it names), the
  field and the modality. A new run on the same data loads it instead of fitting again; its
  completion mark holds a digest of its files, and a state changed since is fitted again.
- ``streams/<key>/``: a split's id stream (see `seqmodel.data.store`), keyed by the source's identity,
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
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from seqmodel import files, registry
from seqmodel._version import __version__
from seqmodel.data import store
from seqmodel.errors import UserError
from seqmodel.files import is_main_process
from seqmodel.plugin import ModalitySpec, Parts, declared, segment_problem, separator_id
from seqmodel.segments import Segment
from seqmodel.task import encode_checked

KEY_FORMAT = 1
PROGRESS_TOKENS = 1 << 24  # a resumable preparation records where it is after about this many tokens
_HASHED_FILE_BYTES = 1 << 26  # config files up to this size are hashed by content, larger ones by size and time


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


def state_files(tokenizer: Any) -> list[tuple[str, bytes]]:
    """(relative path, content) of every file a tokenizer's `save` writes, in path order."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        return [(f.relative_to(tmp).as_posix(), f.read_bytes()) for f in sorted(Path(tmp).rglob("*")) if f.is_file()]


def state_digest(files: list[tuple[str, bytes]]) -> str:
    """sha256 of a tokenizer's saved state (`state_files`)."""
    h = hashlib.sha256()
    for name, content in files:
        h.update(name.encode() + b"\0" + content)
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


# -- what preparation is given ------------------------------------------------------------------
@dataclass(frozen=True)
class SourceData:
    """What preparation reads of a recipe's source.

    Attributes:
        plugin: the source plugin instance.
        name: its registry name (keys, messages).
        examples: split name -> that split's examples, loaded once by the caller.
        read: ``read(method, *args)`` calls a source method, its one-line errors naming the
            recipe's ``[data]`` table.
    """

    plugin: Any
    name: str
    examples: Callable[[str], Any]
    read: Callable[..., Any]

    @cached_property
    def identity(self) -> dict:
        """The source's identity (asked once)."""
        return self.read(self.plugin.identity)

    @cached_property
    def test_is_val(self) -> bool:
        return "info" in declared(self.plugin) and bool(self.plugin.info().get("test_is_val"))


@dataclass(frozen=True)
class ModalityData:
    """What preparing one modality needs -- never the pipeline: its tokenizer (fitted by
    `fit_tokenizer`), the tokenizer plugin's name and validated config, the field it reads, the
    source, and the recipe path and plugin description for messages."""

    modality: str
    field: str
    tokenizer: Any
    plugin: str
    config: Any
    source: SourceData
    where: str
    who: str


# -- fitting -----------------------------------------------------------------------------------
def source_parts(source: Any, tokenizer: Any, split: str, field: str) -> Parts | None:
    """A split's values of `field` in parts, when the source and the tokenizer both read them so."""
    if "parts" in declared(source) and "parts" in declared(tokenizer):
        return source.parts(split, field)
    return None


def training_values(data: ModalityData) -> Iterable[Any]:
    """What a tokenizer fits on: the training split's values of its field (in parts where it can)."""
    source = data.source
    parts = source.read(source_parts, source.plugin, data.tokenizer, "train", data.field)
    if parts is not None:
        return (part for document in parts.documents for part in document)
    return (ex[data.field] for ex in source.examples("train"))


def _config(config: Any) -> Any:
    """A tokenizer's validated recipe config, for a key."""
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config)


def fit_key(data: ModalityData) -> str:
    source = data.source
    return digest({"what": "fit", "format": KEY_FORMAT, "seqmodel": __version__, "source": source.identity,
                   "source_plugin": plugin_key("source", source.name, source.plugin),
                   "tokenizer_plugin": plugin_key("tokenizer", data.plugin, data.tokenizer), "config": _config(data.config),
                   "config_files": config_files(data.config), "field": data.field, "modality": data.modality})


def fit_tokenizer(*data: ModalityData) -> None:
    """Fit a tokenizer on the training split, or load the state an earlier fit on the same data
    left. Several `data` (mixture members sharing the tokenizer): fit once on all of their values."""
    first = data[0]
    tok, modality = first.tokenizer, first.modality
    key = fit_key(first) if len(data) == 1 else digest({"what": "shared fit", "fits": [fit_key(d) for d in data]})
    folder = files.stores_root() / "fits" / key
    with files.locked(folder):
        if files.is_complete(folder):
            try:
                if not files.intact(folder):
                    unsealed = (folder / files.COMPLETE).stat().st_size == 0
                    raise UserError("saved by an older seqmodel, without a digest of its files" if unsealed
                                    else "damaged: its files differ from those it was saved with")
                tok.load(folder)
                say(f"{first.plugin} tokenizer ({modality}): fitted state reused from {folder}")
                return
            except UserError as err:
                say(f"the fitted state in {folder} is not reused ({err}); fitting again")
        tok.fit(itertools.chain.from_iterable(training_values(d) for d in data))
        files.remove_leftovers(folder)
        with files.new_folder(folder, sealed=True) as tmp:
            tok.save(tmp)


# -- streams -----------------------------------------------------------------------------------
class Prepared:
    """``(modality, split) -> TokenStream``: each split's prepared store, mapped, after building it
    when it is missing or damaged (what `TaskContext.stream` asks)."""

    def __init__(self, modalities: dict[str, ModalityData]) -> None:
        self.modalities = modalities
        self.built: list[dict] = []  # what this process prepared (for `seqmodel prepare`)
        self.opened: dict[tuple[str, str], Path] = {}
        self._states: dict[str, list[tuple[str, bytes]]] = {}

    def state_files(self, modality: str) -> list[tuple[str, bytes]]:
        """The fitted tokenizer's saved state (`state_files`), saved once per process."""
        if modality not in self._states:
            self._states[modality] = state_files(self.modalities[modality].tokenizer)
        return self._states[modality]

    def key(self, modality: str, split: str) -> str:
        data = self.modalities[modality]
        source = data.source
        return digest({"what": "stream", "format": KEY_FORMAT, "store_format": store.FORMAT, "seqmodel": __version__,
                       "source": source.identity, "source_plugin": plugin_key("source", source.name, source.plugin),
                       "tokenizer_plugin": plugin_key("tokenizer", data.plugin, data.tokenizer),
                       "tokenizer_config": _config(data.config), "tokenizer_state": state_digest(self.state_files(modality)),
                       "field": data.field, "modality": modality, "split": split})

    def folder(self, modality: str, split: str) -> Path:
        return files.stores_root() / "streams" / self.key(modality, split)

    def __call__(self, modality: str, split: str) -> store.TokenStream:
        if split == "test" and self.modalities[modality].source.test_is_val:
            split = "val"  # one store for both
        folder = self.folder(modality, split)
        with files.locked(folder):
            try:
                stream = store.open_store(folder)
                store.verify(folder, self.modalities[modality].tokenizer.spec().vocab_size)
            except store.Damaged as why:
                if folder.exists():
                    say(f"prepared store {folder} is damaged: {why}; rebuilding it")
                self.build(folder, modality, split)
                stream = store.open_store(folder)
        self.opened[modality, split] = folder
        return stream

    def build(self, folder: Path, modality: str, split: str) -> None:
        data = self.modalities[modality]
        source, tok = data.source, data.tokenizer
        files.remove_leftovers(folder)
        files.discard(folder)
        what = {"source": source.name, "split": split, "modality": modality, "field": data.field,
                "tokenizer": data.plugin, "recipe": data.where}
        parts = source.read(source_parts, source.plugin, tok, split, data.field)
        resumable = parts is None and "resume" in declared(source.plugin) and source.plugin.resumable(split)
        writer = store.StoreWriter(folder, store.id_dtype(tok.spec().vocab_size), what, partial=resumable)
        t0 = time.perf_counter()
        try:
            with progress_bar(parts, source.examples(split), split, len(writer.offsets)) as bar:
                read = write_stream(data, self.documents(data, split, parts, writer), parts is not None, writer, bar)
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

    def documents(self, data: ModalityData, split: str, parts: Parts | None, writer: store.StoreWriter) -> Iterator[Any]:
        """What a split's stream is made of: documents in parts, or the field values; a resumable
        source's values continue after what a partial store holds, recording where they are."""
        if parts is not None:
            return iter(parts.documents)
        examples = data.source.examples(split)
        if not writer.partial:
            return (ex[data.field] for ex in examples)
        if writer.progress is not None:
            examples.load_state_dict(writer.progress)
            say(f"continuing the preparation of the {split} split after {len(writer.offsets):,} examples "
                f"({writer.tokens:,} tokens)")
        return self._recorded(examples, data.field, writer)

    @staticmethod
    def _recorded(examples, field: str, writer: store.StoreWriter) -> Iterator[Any]:
        last = writer.tokens
        for ex in examples:
            yield ex[field]
            if writer.tokens - last >= PROGRESS_TOKENS:  # asked for the next one: `ex` is written
                writer.save_progress(examples.state_dict())
                last = writer.tokens


def write_stream(data: ModalityData, documents: Iterable[Any], in_parts: bool, writer: store.StoreWriter, bar) -> int:
    """Write a split's id stream after what `writer` holds (documents in order, the separator
    between them); returns the bytes of text read (0 when the values were not read in parts)."""
    tok = data.tokenizer
    eot = separator_id(tok)
    separator = np.array([eot]) if eot is not None else None
    spec = tok.spec()
    counter = _Counter(bar)
    for i, document in enumerate(documents, len(writer.offsets)):
        if i and separator is not None:
            writer.append(separator)
        writer.start_document()
        if not in_parts:
            writer.append(encode_checked(tok, document, data.who).ids.numpy())
            bar.update(1)
            continue
        try:
            for ids in tok.encode_parts(counter.count(document)):
                writer.append(checked(ids, spec, data.who))
        except UserError:
            raise
        except Exception as err:  # a plugin's failure names the plugin (as `encode_checked` does)
            raise UserError(f"{data.who}: encode failed: {type(err).__name__}: {err}") from err
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


def progress_bar(parts: Parts | None, examples: Any, split: str, done: int = 0):
    """A progress bar on stderr: bytes (MB/s, ETA) for parts, examples otherwise; shown on a
    terminal, by the main process."""
    if parts is not None:
        return tqdm(total=parts.nbytes, unit="B", unit_scale=True, desc=f"prepare {split}", file=sys.stderr,
                    dynamic_ncols=True, mininterval=0.5, disable=None if is_main_process() else True)
    total = len(examples) if hasattr(examples, "__len__") else None
    return tqdm(total=total, initial=done, unit=" examples", desc=f"prepare {split}", file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, disable=None if is_main_process() else True)
