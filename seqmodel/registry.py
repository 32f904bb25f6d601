"""Plugin discovery over entry points, loaded lazily by name.

Built-in plugins register through seqmodel's own ``pyproject.toml`` exactly as a third party
would; nothing here imports a plugin by module path. A plugin that fails to import (an exception,
``sys.exit()``), or whose object lacks its contract or a member of a capability it declares, is
reported with its entry point and distribution, and never hides the others. Whatever a plugin
prints while it is imported goes to stderr, so ``seqmodel plugins --json`` stays JSON.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, is_dataclass
from importlib.metadata import EntryPoint, entry_points

from seqmodel.capabilities import SOURCE_CAPABILITIES, TASK_CAPABILITIES, TOKENIZER_CAPABILITIES
from seqmodel.errors import UserError

GROUPS = {"tokenizer": "seqmodel.tokenizers", "source": "seqmodel.sources", "task": "seqmodel.tasks"}

REQUIRED = {
    "tokenizer": ("spec", "fit", "encode", "decode", "save", "load"),
    "source": ("split", "identity"),
    "task": ("setup", "outputs", "build_head", "batches", "loss", "evaluate"),
}


def capabilities(kind: str) -> dict[str, tuple[str, ...]]:
    """Capability name -> the members a plugin of `kind` declaring it must have."""
    return {"tokenizer": TOKENIZER_CAPABILITIES, "source": SOURCE_CAPABILITIES, "task": TASK_CAPABILITIES}[kind]


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


def _path_state() -> tuple:
    """sys.path with each folder's modification time: installing or removing a distribution
    adds or removes a folder (its dist-info) in one of them."""
    def mtime(p: str) -> int | None:
        try:
            return os.stat(p or ".").st_mtime_ns
        except OSError:
            return None

    return tuple((p, mtime(p)) for p in sys.path)


_SCANNED: dict[tuple, tuple[EntryPoint, ...]] = {}


def _installed(group: str) -> tuple[EntryPoint, ...]:
    """The group's entry points, read again only when sys.path or one of its folders changed:
    reading every distribution's metadata takes milliseconds, and one recipe's parse looks
    plugins up a dozen times."""
    key = (entry_points, group, _path_state())
    if key not in _SCANNED:
        if len(_SCANNED) > 64:
            _SCANNED.clear()
        _SCANNED[key] = tuple(entry_points(group=group))
    return _SCANNED[key]


def _entry_points(kind: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in _installed(GROUPS[kind]):
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
    declared = getattr(obj, "capabilities", ())
    if not isinstance(declared, (tuple, list, frozenset, set)) or not all(isinstance(c, str) for c in declared):
        return f"`capabilities` must be a tuple of names, got {declared!r}"
    known = capabilities(kind)
    for cap in declared:
        if kind == "task" and cap not in known:
            close = difflib.get_close_matches(cap, known, n=1)
            return f"declares an unknown capability {cap!r}" + (f" (did you mean {close[0]}?)" if close else
                                                                 f" (known: {', '.join(known)})")
        lacking = [m for m in known.get(cap, ()) if not hasattr(obj, m)]
        if lacking:
            return f"declares the {cap!r} capability but has no {', '.join(lacking)}"
    if kind == "task" and "eval_options" in declared and not is_dataclass(obj.EvalOptions):
        return "declares 'eval_options' but its `EvalOptions` is not a dataclass"
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
    if (kind, name) in _CLASHES:
        raise PluginError(f"{prefix}{kind} plugin {name!r} is {_CLASHES[kind, name]}")
    label = describe(kind, name)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            obj = ep.load()
    except (Exception, SystemExit) as err:  # a broken plugin must say who it is
        raise PluginError(f"{prefix}{label} failed to import: {type(err).__name__}: {err}") from None
    problem = check_interface(kind, obj)
    if problem:
        raise PluginError(f"{prefix}{label} is not a valid {kind}: {problem}")
    return obj


def describe(kind: str, name: str) -> str:
    """"task plugin 'lm' (entry point '...' in seqmodel.tasks, distribution D V)", for messages."""
    ep = _entry_points(kind)[name]
    dist, version = _dist(ep)
    return f"{kind} plugin {name!r} (entry point {ep.value!r} in {GROUPS[kind]}, distribution {dist} {version})"


def plugin_version(kind: str, name: str) -> tuple[str, str]:
    """(distribution, version) of an installed plugin."""
    return _dist(_entry_points(kind)[name])


@contextlib.contextmanager
def _time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise TimeoutError in the main thread after `seconds` (a plugin whose import blocks)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"{what} took longer than {seconds:g} s to import")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def iter_available(kind: str | None = None, check: bool = True, time_limit: float = 0.0) -> Iterator[PluginInfo]:
    """Every registered plugin, one at a time (so a listing shows each as it loads), each with its
    load error (if `check`) instead of raising; `time_limit` seconds per import, 0 for none."""
    for k in [kind] if kind else list(GROUPS):
        for name, ep in sorted(_entry_points(k).items()):
            dist, version = _dist(ep)
            error = None
            if check:
                try:
                    with _time_limit(time_limit, f"{k} plugin {name!r}"):
                        load(k, name)
                except TimeoutError as err:
                    error = str(err)
                except UserError as err:
                    error = re.split(r" failed to import: | is not a valid \w+: | is (?=registered twice)", str(err))[-1]
            yield PluginInfo(k, name, ep.value, dist, version, error)


def available(kind: str | None = None, check: bool = True) -> list[PluginInfo]:
    """Every registered plugin, each with its load error (if `check`) instead of raising."""
    return list(iter_available(kind, check))
