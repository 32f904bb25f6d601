"""Documentation generated from the config dataclasses, so it cannot drift from the code.

Every config field carries its docstring as a string literal right after it (the convention of
every `Config` in seqmodel and its plugins); `field_docs` reads them back from the class source.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache


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


def type_name(tp) -> str:
    """A short human name of a field's type ("integer", "list of strings" ...)."""
    from .config import _type_name

    return _type_name(tp).replace(" or nothing", "").removeprefix("an ").removeprefix("a ")


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
        rows.append({"name": f.name, "type": type_name(hints[f.name]), "default": default, "doc": field_docs(cls)[f.name]})
    return rows
