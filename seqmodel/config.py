"""Typed config sections from TOML tables: unknown keys, wrong types and bad values become
one-line `UserError`s naming the file, the table and the key.

A config section is a dataclass with defaults for every field; a recipe table is a diff over
those defaults. A section may define ``validate() -> list[(key, problem)]`` for value checks.
Wherever a list of strings is expected a single string is accepted as a one-element list.

Fields declared with `path_field` hold file or folder names: `absolute_paths` makes the relative
ones absolute against a base folder (the recipe file's folder; see `seqmodel.recipe`), so a run
records where its data is and works from any current directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqmodel.errors import UserError, cut, shown

DEEPEST = 32  # nesting of tables and lists a recipe may have
PATH = "seqmodel.path"  # dataclass field metadata key of `path_field`


def _always(table: dict) -> bool:
    return True


def path_field(default: Any = "", *, default_factory: Callable[[], Any] | None = None,
               when: Callable[[dict], bool] = _always):
    """A config field that holds paths: a string, a list of them, or a table of either (split ->
    files). Relative paths in a recipe file are read against the recipe file's folder (those given
    with ``--set`` or in a recipe dict against the current directory) and recorded absolute.

    Args:
        when: given the recipe table, whether the value is a local path at all (the `hf` source's
            `data_files` are files inside a hub dataset unless a local builder reads them).
    """
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={PATH: when})
    return dataclasses.field(default=default, metadata={PATH: when})


def is_path_field(f: dataclasses.Field) -> bool:
    return PATH in f.metadata


def absolute(path: str, base: str | os.PathLike) -> str:
    """`path` (a file, folder or glob pattern) made absolute against `base`; "" and URLs as given."""
    if not path or "://" in path:
        return path
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def _absolute_value(value: Any, base: str | os.PathLike) -> Any:
    if isinstance(value, str):
        return absolute(value, base)
    if isinstance(value, list):
        return [_absolute_value(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _absolute_value(v, base) for k, v in value.items()}
    return value


def absolute_paths(cls, table: dict, base: str | os.PathLike) -> dict:
    """A copy of recipe `table` for config dataclass `cls` whose `path_field` values are absolute
    against `base`; values of other types are left for `build` to refuse."""
    out = dict(table)
    for f in dataclasses.fields(cls):
        if is_path_field(f) and f.name in out and f.metadata[PATH](table):
            out[f.name] = _absolute_value(out[f.name], Path(base))
    return out


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}" if typing.get_args(tp) else "a list"
    if origin is dict:
        return "a table"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "nothing"}.get(tp, str(tp))


def coerce(value: Any, tp) -> Any:
    """`value` as type `tp`, or raise TypeError. Integers are accepted for floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str) and item in (str, Any):  # one string is a one-element list
            return [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [coerce(v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError
        return dict(value)
    if tp is type(None):
        if value is not None:
            raise TypeError
        return None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise TypeError
        return value
    raise TypeError


def build(cls, table: Any, where: str):
    """Instantiate dataclass `cls` from a TOML `table`; errors read ``{where} KEY: problem``."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    values = {}
    for key, value in table.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(known)})"
            raise UserError(f"{where} {cut(key)}: unknown key{hint}")
        if dataclasses.is_dataclass(hints[key]):  # a sub-table, e.g. [train] lora = {rank = 8}
            values[key] = build(hints[key], value, f"{where} {key}")
            continue
        try:
            values[key] = coerce(value, hints[key])
        except TypeError:
            raise UserError(f"{where} {key}: expected {_type_name(hints[key])}, got {shown(value)}") from None
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {err}") from None
    for key, problem in getattr(obj, "validate", lambda: [])():
        raise UserError(f"{where} {key}: {problem}")
    return obj


def to_dict(obj) -> dict:
    """A config dataclass as a plain TOML-able dict."""
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value); the value is read as TOML, else a string."""
    path, sep, raw = text.partition("=")
    parts = path.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise UserError(f"--set {shown(text)}: expected section.key=value, e.g. train.steps=100")
    return ".".join(parts[:-1]), parts[-1], parse_value(raw, f"--set {path.strip()}")


def parse_value(raw: str, where: str = "--set") -> Any:
    """A command-line value read as TOML (``3``, ``true``, ``[1, 2]``, ``"x"``), else the string
    itself; one `where` cannot hold (see `check_plain`) is a one-line error naming it."""
    import tomllib

    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()
    except RecursionError:
        raise UserError(f"{where}: the value nests too deeply") from None
    check_plain(value, where)
    return value


def check_plain(data: Any, where: str, tables: bool = False) -> None:
    """Refuse what a recipe cannot hold: tables or lists nested deeper than `DEEPEST`, and TOML
    dates and times (recipes are saved as JSON). Walks without recursion; `tables`: `data` is a
    whole recipe, whose top-level keys are named as ``[table]``."""
    import datetime

    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > DEEPEST or isinstance(node, (datetime.date, datetime.time)):
            key = ".".join(path[1:] if tables else path).replace(".[", "[")
            name = f"[{path[0]}] {key}".rstrip() if tables and path else key
            here = cut(f"{where} {name}".rstrip(), 200)
            if len(path) > DEEPEST:
                raise UserError(f"{here}: nested more than {DEEPEST} levels deep")
            raise UserError(f"{here}: TOML dates and times are not recipe values, got {node.isoformat()!r} "
                            "(quote it to pass a string)")
        if isinstance(node, dict):
            stack += [(v, (*path, str(k))) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            stack += [(v, (*path, f"[{i}]")) for i, v in enumerate(node)]
