"""Typed config sections from TOML tables: unknown keys, wrong types and bad values become
one-line `UserError`s naming the file, the table and the key.

A config section is a dataclass with defaults for every field; a recipe table is a diff over
those defaults. A section may define ``validate() -> list[(key, problem)]`` for value checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from .errors import UserError


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
        if not isinstance(value, (list, tuple)):
            raise TypeError
        (item,) = typing.get_args(tp) or (Any,)
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
            raise UserError(f"{where} {key}: unknown key{hint}")
        if dataclasses.is_dataclass(hints[key]):  # a sub-table, e.g. [train] lora = {rank = 8}
            values[key] = build(hints[key], value, f"{where} {key}")
            continue
        try:
            values[key] = coerce(value, hints[key])
        except TypeError:
            raise UserError(f"{where} {key}: expected {_type_name(hints[key])}, got {value!r}") from None
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
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. train.steps=100")
    return ".".join(parts[:-1]), parts[-1], parse_value(raw)


def parse_value(raw: str) -> Any:
    """A command-line value read as TOML (``3``, ``true``, ``[1, 2]``, ``"x"``), else the string itself."""
    import tomllib

    try:
        return tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()
