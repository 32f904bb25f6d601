"""Any HuggingFace `datasets` dataset as a source: hub names and the local builders alike.

``datasets.load_dataset(name, config, data_files=..., data_dir=..., revision=..., **options)``
loads every split once. The configured columns are renamed to seqmodel's field names --
``text_field`` -> "text", ``image_field`` -> "image" (a PIL image, mode "L" or "RGB"),
``audio_field`` -> "audio", ``label_field`` -> "label" -- so a recipe written for a built-in
source works unchanged. An image or audio column may hold file names: relative ones are read
against the folder of the local data files (`data_files`, `data_dir`), and decoded by the
tokenizer when an example is encoded (`patches`, `mel`); the paths in `data_files` and `data_dir`
themselves are read against the recipe's folder when a local builder reads them.

Splits: "train", "val" and "test" read the dataset splits named by `train_split`, `val_split` and
`test_split`. Without a validation split, each training example goes to "val" when a hash of
(`seed`, its index) falls below `val_fraction`: a fixed choice, identical with and without
streaming, that keeps the examples' order. Without a test split, "test" is "val".

Offline, use the local builders: ``name = "text"`` (one example per line; ``options =
{sample_by = "document"}`` for one per file), ``"json"``, ``"csv"``, ``"parquet"`` or
``"imagefolder"``, with ``data_files``. With internet, ``name = "user/dataset"`` downloads from
the hub into the datasets cache (``cache_dir`` or ``$HF_DATASETS_CACHE``); pin ``revision`` so a
run's data cannot change under it.

Without streaming, the prepared dataset stays in `datasets`' memory-mapped Arrow files; rows
are converted when read. Streaming (``streaming = true``) reads examples lazily from the files or
the hub instead of preparing the whole dataset on disk first: `split` returns an iterable that
starts a new pass on each iteration. A token-stream task (`lm`, `mlm`) reads it once, example by
example, into its prepared store (`seqmodel.data.prepare`), which every later run maps; a preparation
killed part-way continues where it stopped (`Stream.state_dict`, on `datasets`'
`IterableDataset.state_dict`). Map-style tasks collect the split into a list. The identity (the
store's key and the resume guard's data fingerprint) holds the size and modification time of
local data files, so a changed local file is a new store and a refused resume; a remote stream
is only known by its name and `revision`, so pin the revision.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from seqmodel.capabilities import check_split
from seqmodel.config import path_field
from seqmodel.errors import UserError, cut, shown
from seqmodel.progress import terminal

RESERVED = ("path", "name", "split", "data_files", "data_dir", "revision", "cache_dir", "streaming")
LOCAL_BUILDERS = ("text", "json", "csv", "parquet", "arrow", "pandas", "imagefolder", "audiofolder", "videofolder",
                  "webdataset")
FILE_FIELDS = ("image", "audio")  # fields whose string values are file names


def reads_local_files(table: dict) -> bool:
    """Whether `data_files` / `data_dir` name local files: a local builder reads them (for a hub
    dataset they are paths inside the dataset's repository)."""
    return table.get("name") in LOCAL_BUILDERS


@dataclass
class HFConfig:
    """`[data] source = "hf"`."""

    name: str = ""
    """Dataset: a hub name ("user/dataset") or a local builder ("text", "json", "csv", "parquet", "imagefolder")."""
    config: str = ""
    """The dataset's configuration name ("" for its default)."""
    data_files: str | list[str] | dict[str, Any] | None = path_field(None, when=reads_local_files)
    """Files for a local builder: a path or glob, a list, or a table split name -> files."""
    data_dir: str = path_field(when=reads_local_files)
    """Folder of the data files ("" for none)."""
    revision: str = ""
    """Hub revision (tag, branch or commit) to pin ("" for the newest)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Further `load_dataset` keyword arguments, e.g. {sample_by = "document"} for the text builder."""
    text_field: str = "text"
    """Column given as the "text" field ("" for none)."""
    image_field: str = ""
    """Column given as the "image" field ("" for none): images, or file names of images."""
    audio_field: str = ""
    """Column given as the "audio" field ("" for none): `datasets` Audio values, or file names of
    WAV, FLAC or OGG files (decoded per example by the `mel` tokenizer)."""
    label_field: str = ""
    """Column given as the "label" field ("" for none)."""
    train_split: str = "train"
    """Dataset split used for training."""
    val_split: str = "validation"
    """Dataset split used for validation; carved from training when the dataset lacks it."""
    test_split: str = "test"
    """Dataset split used for testing; the validation split when the dataset lacks it."""
    val_fraction: float = 0.1
    """Share of training examples carved out for validation when there is no validation split."""
    seed: int = 0
    """Seeds which examples are carved out for validation."""
    streaming: bool = False
    """Read examples lazily (an iterable per split) instead of preparing the dataset first."""
    cache_dir: str = path_field()
    """Where `datasets` caches downloads and prepared data ("" for its default)."""

    def columns(self) -> dict[str, str]:
        """seqmodel field -> dataset column, for the fields in use."""
        named = {"text": self.text_field, "image": self.image_field, "audio": self.audio_field,
                 "label": self.label_field}
        return {k: v for k, v in named.items() if v}

    def validate(self) -> list[tuple[str, str]]:
        bad = []
        if not self.name:
            bad.append(("name", 'required: a hub dataset name or a local builder such as "text" or "json"'))
        if not self.columns():
            bad.append(("text_field", "no field in use: set text_field, image_field, audio_field or label_field"))
        if not 0 < self.val_fraction < 1:
            bad.append(("val_fraction", f"must be in (0, 1), got {self.val_fraction}"))
        clash = sorted(set(self.options) & set(RESERVED))
        if clash:
            bad.append(("options", f"{', '.join(clash)} cannot be given here (use the [data] keys of the same name)"))
        return bad


def in_val(seed: int, index: int, fraction: float) -> bool:
    """Whether training example `index` is carved out for validation."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def convert(row: dict, columns: dict[str, str], folder: str | list[str] = "") -> dict:
    """A dataset row as a seqmodel example (renamed fields, images as "L" or "RGB", relative file
    names in image and audio columns joined to `folder`, that of the data files)."""
    out = {k: row[col] for k, col in columns.items()}
    for key in FILE_FIELDS:
        if isinstance(out.get(key), str) and out[key] and not os.path.isabs(os.path.expanduser(out[key])):
            out[key] = _in_folder(out[key], folder, columns[key])
    if "image" in out and hasattr(out["image"], "mode"):
        from seqmodel_plugins.image_data import _normalise_mode

        out["image"] = _normalise_mode(out["image"])
    return out


def _in_folder(name: str, folder: str | list[str], column: str) -> str:
    if isinstance(folder, list):
        raise UserError(f"column {column!r}: relative file name {shown(name)}, but the data files lie in several "
                        f"folders ({', '.join(folder[:3])}); write absolute file names or keep the data files in one folder")
    return os.path.normpath(os.path.join(folder or os.getcwd(), os.path.expanduser(name)))


def data_folders(data_files, data_dir: str) -> dict[str | None, str | list[str]]:
    """Dataset split name (None: every split) -> the one folder its local data files lie in, or
    the list of folders when they lie in several: what relative file names in them are read against."""
    if data_dir:
        return {None: os.path.abspath(os.path.expanduser(data_dir))}
    tables = data_files.items() if isinstance(data_files, dict) else [(None, data_files)]
    out = {}
    for split, files in tables:
        folders = sorted({os.path.dirname(f) for f in local_files(files, "")})
        out[split] = folders[0] if len(folders) == 1 else folders
    return out


class Rows(Sequence):
    """A map-style dataset as a sequence of seqmodel examples."""

    def __init__(self, dataset, columns: dict[str, str], folder: str | list[str] = "") -> None:
        self.dataset, self.columns, self.folder = dataset, columns, folder

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return convert(self.dataset[i % len(self)], self.columns, self.folder)

    def __iter__(self) -> Iterator[dict]:
        return (convert(row, self.columns, self.folder) for row in self.dataset)


class Stream:
    """A streamed split: each iteration is a new pass; `part` picks "all", "train" or "val"
    examples by `in_val`. `state_dict()` is the position after the example last yielded;
    `load_state_dict(state)` makes the next pass start there (then passes start over)."""

    def __init__(self, dataset, columns: dict[str, str], part: str = "all", seed: int = 0, fraction: float = 0.0,
                 folder: str | list[str] = "") -> None:
        self.dataset, self.columns, self.part, self.seed, self.fraction = dataset, columns, part, seed, fraction
        self.folder = folder
        self._index, self._start = 0, 0

    def __iter__(self) -> Iterator[dict]:
        start, self._start = self._start, 0
        for index, row in enumerate(self.dataset, start):
            self._index = index + 1
            if self.part == "all" or in_val(self.seed, index, self.fraction) == (self.part == "val"):
                yield convert(row, self.columns, self.folder)

    def state_dict(self) -> dict:
        return {"dataset": self.dataset.state_dict(), "index": self._index}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state["dataset"])
        self._start = self._index = int(state["index"])


def local_files(data_files, data_dir: str) -> dict[str, list[int]]:
    """path -> [size, modification time (ns)] of the local files `data_files` (a path or glob, a
    list or a table of them) and `data_dir` name; hub names match no local file."""
    import glob

    patterns = []
    for value in (data_files.values() if isinstance(data_files, dict) else [data_files]):
        patterns += value if isinstance(value, list) else [value] if value else []
    if data_dir:
        patterns.append(os.path.join(data_dir, "**", "*"))
    found = {}
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.expanduser(str(pattern)), recursive=True)):
            if os.path.isfile(path):
                st = os.stat(path)
                found[os.path.abspath(path)] = [st.st_size, st.st_mtime_ns]
    return found


def check_local_files(data_files) -> None:
    """A local `data_files` entry that is a folder or an empty file is an error naming it (datasets
    would report "Unable to find" or a generation error that names neither)."""
    import glob

    entries = data_files.values() if isinstance(data_files, dict) else [data_files]
    for entry in entries:
        for pattern in entry if isinstance(entry, list) else [entry]:
            if not isinstance(pattern, str) or "://" in pattern:
                continue
            hits = [h for h in glob.glob(os.path.expanduser(pattern), recursive=True)]
            if hits and all(os.path.isdir(h) for h in hits):
                raise UserError(f"data_files: {shown(pattern)} names only folders; name the files, "
                                f"e.g. {shown(os.path.join(pattern, '*'))}")
            if hits and all(os.path.isfile(h) and os.path.getsize(h) == 0 for h in hits):
                raise UserError(f"data_files: {shown(pattern)} names only empty files")


def root_cause(err: BaseException) -> str:
    """What went wrong, from the innermost exception ``datasets`` wrapped ("An error occurred while
    generating the dataset" says nothing of the file)."""
    seen = [err]
    while seen[-1].__cause__ is not None or seen[-1].__context__ is not None:
        nxt = seen[-1].__cause__ or seen[-1].__context__
        if nxt in seen or len(seen) > 20:
            break
        seen.append(nxt)
    inner = seen[-1]
    return f"{type(inner).__name__}: {cut(str(inner), 300)}"


@contextmanager
def datasets_bars(on: bool) -> Iterator[None]:
    """`datasets`' own progress bars on a terminal only: in a log, their lines would surround
    seqmodel's (seqmodel.progress)."""
    import datasets

    was_off = datasets.are_progress_bars_disabled()
    if not on and not was_off:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not on and not was_off:
            datasets.enable_progress_bars()


class HFSource:
    """A HuggingFace `datasets` dataset; see the module docstring."""

    Config = HFConfig
    capabilities = ("info", "resume")

    def __init__(self, config: HFConfig) -> None:
        self.config = config
        self.fields = tuple(config.columns())

    @cached_property
    def _splits(self) -> dict:
        import datasets

        c = self.config
        check_local_files(c.data_files)
        kwargs = {"data_files": c.data_files, "data_dir": c.data_dir or None, "revision": c.revision or None,
                  "cache_dir": c.cache_dir or None, "streaming": c.streaming, **c.options}
        try:
            with datasets_bars(terminal()):
                loaded = datasets.load_dataset(c.name, c.config or None, **kwargs)
        except Exception as err:  # datasets raises many unrelated types for a bad name, file or option
            raise UserError(f"hf source: cannot load dataset {c.name!r}: {root_cause(err)}") from None
        if c.train_split not in loaded:
            raise UserError(f"train_split: dataset {c.name!r} has no split {c.train_split!r} (it has: {', '.join(loaded)})")
        self._check_columns(loaded[c.train_split])
        return dict(loaded)

    def _check_columns(self, dataset) -> None:
        have = dataset.column_names
        if have is None:  # some streamed datasets only know their columns after the first example
            return
        for key, col in (("text_field", self.config.text_field), ("image_field", self.config.image_field),
                         ("audio_field", self.config.audio_field), ("label_field", self.config.label_field)):
            if col and col not in have:
                raise UserError(f"{key}: {col!r} is not a column of dataset {self.config.name!r} "
                                f"(it has: {', '.join(have)}); set {key} = \"\" if it is not needed")

    def split(self, name: str) -> Rows | Stream:
        """The examples of split "train", "val" or "test" (see the module docstring)."""
        check_split(name)
        c, splits = self.config, self._splits
        named = {"train": c.train_split, "val": c.val_split, "test": c.test_split}
        if name == "test" and c.test_split not in splits:
            name = "val"
        if named[name] in splits and (name != "train" or c.val_split in splits):
            return self._wrap(splits[named[name]], "all", named[name])
        return self._wrap(splits[c.train_split], name, c.train_split)

    def resumable(self, split: str) -> bool:
        """Streamed splits can say where they are and start there (`Stream.state_dict`)."""
        return self.config.streaming

    def _wrap(self, dataset, part: str, split: str) -> Rows | Stream:
        columns, c = self.config.columns(), self.config
        dataset = dataset.select_columns(list(dict.fromkeys(columns.values())))
        folders = self._folders
        folder = folders.get(split, folders.get(None, ""))
        if c.streaming:
            return Stream(dataset, columns, part, c.seed, c.val_fraction, folder)
        if part == "all":
            return Rows(dataset, columns, folder)
        keep = [i for i in range(len(dataset)) if in_val(c.seed, i, c.val_fraction) == (part == "val")]
        return Rows(dataset.select(keep, keep_in_memory=True), columns, folder)

    @cached_property
    def _folders(self) -> dict[str | None, str | list[str]]:
        """What relative file names in image and audio columns are read against (`data_folders`)."""
        c = self.config
        if not {"image", "audio"} & set(c.columns()) or c.name not in LOCAL_BUILDERS:
            return {}
        return data_folders(c.data_files, c.data_dir)

    def info(self) -> dict:
        """What tasks may read: the class names of a `datasets.ClassLabel` label column, and
        whether the test split is the validation split (a dataset without a test split)."""
        info = {"label_names": self.label_names} if self.label_names else {}
        return info | {"test_is_val": self.config.test_split not in self._splits}

    @property
    def label_names(self) -> list[str] | None:
        """Class names when the label column is a `datasets.ClassLabel`, else None."""
        if not self.config.label_field:
            return None
        features = self._splits[self.config.train_split].features or {}
        return list(getattr(features.get(self.config.label_field), "names", None) or []) or None

    def identity(self) -> dict:
        c = self.config
        fingerprints = {k: getattr(v, "_fingerprint", None) for k, v in self._splits.items()}
        local = local_files(c.data_files, c.data_dir) if c.streaming else {}
        return {"source": "hf", "name": c.name, **({"local_files": local} if local else {}), "config": c.config, "data_files": c.data_files, "data_dir": c.data_dir,
                "revision": c.revision, "options": c.options, "columns": c.columns(), "streaming": c.streaming,
                "splits": [c.train_split, c.val_split, c.test_split], "val_fraction": c.val_fraction,
                "seed": c.seed, "fingerprints": fingerprints}
