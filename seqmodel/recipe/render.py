"""Documentation generated from the config dataclasses, so it cannot drift from the code.

Every config field carries its docstring as a string literal right after it (the convention of
every `Config` in seqmodel and its plugins); `field_docs` reads them back from the class source.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import cache

from seqmodel import registry
from seqmodel.capabilities import can, declared
from seqmodel.config import is_path_field
from seqmodel.model.config import ModelConfig, SampleConfig
from seqmodel.recipe.schema import TrainConfig


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring, for a dataclass and its dataclass bases ("" when absent)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                doc = after.value.value if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                                            and isinstance(after.value.value, str)) else ""
                docs[node.target.id] = " ".join(doc.split())
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


_NAMES = {int: "integer", float: "number", bool: "boolean", str: "string", dict: "table"}


def type_name(tp, plural: bool = False) -> str:
    """A short human name of a field's type ("integer", "list of strings", "string or table" ...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a, plural) for a in args if a is not type(None))
    if origin in (list, tuple):
        return f"list{'s' if plural else ''} of {type_name(args[0], plural=True) if args else 'values'}"
    if origin is dict:
        tp = dict
    name = _NAMES.get(tp, getattr(tp, "__name__", str(tp)))
    return name + ("s" if plural else "")


def describe_fields(cls: type) -> list[dict]:
    """[{name, type, default, doc}] of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kind = type_name(hints[f.name]) + (" (path)" if is_path_field(f) else "")
        rows.append({"name": f.name, "type": kind, "default": default, "doc": field_docs(cls)[f.name]})
    return rows


def toml_value(value) -> str:
    """A value as TOML text (strings, numbers, booleans, lists and tables; None has no TOML form)."""
    import json
    import math

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan")
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def table_lines(cls: type, values: dict | None = None, first: dict | None = None) -> list[str]:
    """``key = value  # type: docstring`` lines for a config dataclass (`values` override the
    defaults; `first` are leading keys such as ``kind = "char"``)."""
    lines = [f"{k} = {toml_value(v)}" for k, v in (first or {}).items()]
    for row in describe_fields(cls):
        value = (values or {}).get(row["name"], row["default"])
        text = f"# {row['name']} = (unset)" if value is None else f"{row['name']} = {toml_value(value)}"
        lines.append(f"{text:<34} # {row['type']}: {row['doc']}")
    return lines


def plugin_doc(kind: str, name: str) -> str:
    """Every key of a plugin's recipe table (and a task's evaluation options), with type, default
    and docstring, for `seqmodel plugins show NAME`."""

    cls = registry.load(kind, name)
    dist, version = registry.plugin_version(kind, name)
    table = {"tokenizer": "[tokenizer]", "source": "[data]", "task": "[task]"}[kind]
    key = {"tokenizer": "kind", "source": "source", "task": "kind"}[kind]
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    out = [f"{kind} plugin {name!r} ({dist} {version}): {summary}",
           f"capabilities: {', '.join(sorted(declared(cls))) or 'none'}", "", table]
    out += table_lines(cls.Config, first={key: name} | ({"field": "text"} if kind == "tokenizer" else {}))
    if kind == "task" and can(cls, "eval_options"):
        out += ["", "evaluation options (seqmodel eval RUN --set KEY=VALUE):"]
        out += table_lines(cls.EvalOptions)
    return "\n".join(out)


def recipe_doc(recipe) -> str:
    """The recipe with every setting, defaults included, as annotated TOML (`seqmodel check
    --print`); a mixture shows each member resolved."""
    resolved = recipe.resolved()
    out = [f"# {recipe.path}: every setting, defaults included", "", "[model]"]
    out += table_lines(ModelConfig, resolved["model"])
    out += ["", "[train]", *table_lines(TrainConfig, resolved["train"])]
    if not recipe.members:
        return "\n".join(out + member_lines(recipe, ""))
    for name, member in recipe.members.items():
        mask = member.recipe.model
        out += ["", f"[mixture.{name}]", f"weight = {toml_value(member.weight)}",
                f"loss_weight = {toml_value(member.loss_weight)}", f"mask = {toml_value(mask.mask)}",
                f"layer_masks = {toml_value(mask.layer_masks)}"]
        out += member_lines(member.recipe, f"mixture.{name}.")
    return "\n".join(out)


def member_lines(recipe, prefix: str) -> list[str]:
    """The data, tokenizer, task and sample tables of a single-task recipe, under `prefix`."""
    resolved = recipe.resolved()
    out = ["", f"[{prefix}data]", *table_lines(recipe.data.cls.Config, resolved["data"], {"source": recipe.data.name})]
    for m, b in recipe.tokenizers.items():
        values = resolved["tokenizers"][m]
        out += ["", f"[{prefix}tokenizers.{m}]", *table_lines(b.cls.Config, values, {"kind": b.name, "field": b.field})]
    out += ["", f"[{prefix}task]", *table_lines(recipe.task.cls.Config, resolved["task"], {"kind": recipe.task.name})]
    return out + ["", f"[{prefix}sample]", *table_lines(SampleConfig, resolved["sample"])]
