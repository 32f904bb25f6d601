"""Plugin discovery over entry points, loaded lazily by name.

Built-in plugins register through seqmodel's own ``pyproject.toml`` exactly as a third party
would; nothing here imports a plugin by module path. A plugin that fails to import, or whose
object lacks the interface, is reported with its entry point and distribution, and never hides
the others.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, is_dataclass
from importlib.metadata import EntryPoint, entry_points

from .errors import UserError

GROUPS = {"tokenizer": "seqmodel.tokenizers", "source": "seqmodel.sources", "task": "seqmodel.tasks"}

REQUIRED = {
    "tokenizer": ("spec", "fit", "encode", "decode", "save", "load"),
    "source": ("split", "identity"),
    "task": ("setup", "batches", "loss", "evaluate"),
}


class PluginError(UserError):
    """A plugin could not be loaded or does not implement its contract."""


@dataclass(frozen=True)
class PluginInfo:
    kind: str
    name: str
    value: str
    distribution: str
    version: str
    error: str | None = None

    @property
    def group(self) -> str:
        return GROUPS[self.kind]


def _dist(ep: EntryPoint) -> tuple[str, str]:
    d = getattr(ep, "dist", None)
    if d is None:
        return "unknown distribution", "?"
    return d.metadata["Name"] or "unknown distribution", d.version or "?"


def _entry_points(kind: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUPS[kind]):
        if ep.name in found and _dist(found[ep.name]) != _dist(ep):
            _CLASHES[(kind, ep.name)] = (f"registered twice in {GROUPS[kind]}: by {' '.join(_dist(found[ep.name]))} "
                                         f"and by {' '.join(_dist(ep))}; uninstall one")
        found.setdefault(ep.name, ep)
    return found


_CLASHES: dict[tuple[str, str], str] = {}


def check_interface(kind: str, obj) -> str | None:
    """Why `obj` is not a usable plugin class of `kind`, or None."""
    if not inspect.isclass(obj):
        return f"expected a class, got {type(obj).__name__}"
    missing = [m for m in REQUIRED[kind] if not callable(getattr(obj, m, None))]
    if missing:
        return f"missing method(s): {', '.join(missing)}"
    if not is_dataclass(getattr(obj, "Config", None)):
        return "missing a `Config` dataclass (its recipe table)"
    return None


def load(kind: str, name: str, where: str = ""):
    """The plugin class registered as `name` in the group of `kind` ('tokenizer', 'source', 'task')."""
    eps = _entry_points(kind)
    prefix = f"{where}: " if where else ""
    if name not in eps:
        close = difflib.get_close_matches(name, eps, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(f"{prefix}unknown {kind} plugin {name!r} ({hint}available: {', '.join(sorted(eps)) or 'none'})")
    ep = eps[name]
    dist, version = _dist(ep)
    if (kind, name) in _CLASHES:
        raise PluginError(f"{prefix}{kind} plugin {name!r} is {_CLASHES[kind, name]}")
    label = f"{kind} plugin {name!r} (entry point {ep.value!r} in {GROUPS[kind]}, distribution {dist} {version})"
    try:
        obj = ep.load()
    except Exception as err:  # a broken plugin must say who it is
        raise PluginError(f"{prefix}{label} failed to import: {type(err).__name__}: {err}") from err
    problem = check_interface(kind, obj)
    if problem:
        raise PluginError(f"{prefix}{label} is not a valid {kind}: {problem}")
    return obj


def plugin_version(kind: str, name: str) -> tuple[str, str]:
    """(distribution, version) of an installed plugin."""
    return _dist(_entry_points(kind)[name])


def available(kind: str | None = None, check: bool = True) -> list[PluginInfo]:
    """Every registered plugin, each with its load error (if `check`) instead of raising."""
    out = []
    for k in [kind] if kind else list(GROUPS):
        for name, ep in sorted(_entry_points(k).items()):
            dist, version = _dist(ep)
            error = None
            if check:
                try:
                    load(k, name)
                except UserError as err:
                    error = re.split(r" failed to import: | is not a valid \w+: | is (?=registered twice)", str(err))[-1]
            out.append(PluginInfo(k, name, ep.value, dist, version, error))
    return out
