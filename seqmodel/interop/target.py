"""Where an export goes: a folder of its own, written whole or not at all.

An export never overwrites what it did not write: the target must be new, empty, or an earlier
export (its ``seqmodel.json`` lists the files it wrote, and the folder holds nothing else); it
never goes inside a run's ``checkpoints/``. The files are written into a temporary sibling
folder that is renamed into place at the end, so a failed write (a full disk, a read-only
folder) is one line and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from seqmodel.errors import UserError
from seqmodel.files import replace_folder, write_synced

MARKER = "seqmodel.json"
"""The file that marks a folder as a seqmodel export, listing what the export wrote."""


EARLIER_HF = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json")
"""What an HF export wrote before seqmodel.json listed its files ({"run", "format": "hf"} only)."""


def written_by_export(folder: Path) -> set[str] | None:
    """The file names an earlier export wrote into `folder` (None: `folder` is not one)."""
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        files = record["files"] if "files" in record or record["format"] != "hf" else list(EARLIER_HF)
        assert isinstance(files, list) and all(isinstance(f, str) for f in files) and record["format"] in ("hf", "onnx")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AssertionError, RecursionError):
        return None
    return set(files) | {MARKER}


def check_target(out: Path) -> None:
    """A one-line error unless `out` may receive an export (see the module docstring)."""
    if out.is_symlink():
        raise UserError(f"{out}: a symbolic link; give --out a new or empty folder")
    real = out.resolve()
    for folder in (real, *real.parents):
        if folder.name == "checkpoints" and (folder.parent / "recipe.json").is_file():
            raise UserError(f"{out}: inside the checkpoints of run {folder.parent}; an export never writes there "
                            f"(give --out a folder of its own, e.g. {folder.parent / 'export'})")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: a file, not a folder; give --out a new or empty folder")
    try:
        entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as err:
        raise UserError(f"{out}: cannot list the folder: {err.strerror or err}") from None
    if not entries:
        return
    written = written_by_export(out)
    if written is None:
        raise UserError(f"{out}: not empty and not an earlier seqmodel export (no valid {MARKER}); an export never "
                        "overwrites files it did not write: give --out a new or empty folder")
    foreign = [name for name in entries if name not in written]
    if foreign:
        raise UserError(f"{out}: holds {foreign[0]!r}, which the earlier export there did not write; an export never "
                        "overwrites or removes files it did not write: give --out a new or empty folder")


@contextlib.contextmanager
def export_folder(out: Path, record: dict) -> Iterator[Path]:
    """A new temporary folder beside `out` for the block to write the export into; when the block
    ends without an error, ``seqmodel.json`` (`record` and the files written) is added and the
    folder replaces `out`. A write error is one line; nothing half-written is left."""
    out = Path(os.path.abspath(out))
    check_target(out)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        files = sorted(p.name for p in tmp.iterdir())
        write_synced(tmp / MARKER, json.dumps(record | {"files": files}, indent=1))
        replace_folder(tmp, out)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_error(err):
            raise write_error(out, err) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_write_error(err: Exception) -> bool:
    """An operating-system write failure, as Python or a library written in Rust (safetensors:
    "I/O error: ... (os error N)") reports it."""
    return isinstance(err, OSError) or os_error_code(err) is not None


def os_error_code(err: Exception) -> int | None:
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found.group(1)) if found else None


def write_error(out: Path, err: Exception) -> UserError:
    """A failed export write as one line."""
    code = err.errno if isinstance(err, OSError) else os_error_code(err)
    text = (err.strerror if isinstance(err, OSError) else None) or (os.strerror(code) if code else str(err))
    if code == errno.ENOSPC:
        return UserError(f"{out}: no space left on the device for the export; free some space or choose another "
                         "--out (nothing half-written was kept)")
    return UserError(f"{out}: cannot write the export: {text} (nothing half-written was kept)")
