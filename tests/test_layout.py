"""The rooms of `seqmodel/` keep their shape: imports point one way, no circles, no hidden imports.

    cli -> api -> training -> data -> {recipe, interop} -> task, generate -> model -> SDK leaves

An `ast` walk over the package (imports inside functions and under TYPE_CHECKING count too), so
a change that makes the layout decay fails here, naming the import.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "seqmodel"
LEAVES = {"errors", "config", "capabilities", "files", "_version", "segments", "masks", "plugin", "registry",
          "progress", "plots"}
"""The plugin SDK's leaves: they import nothing of the project but each other."""
LAZY_ALLOWED = ("seqmodel", "seqmodel.cli")
"""Where a function may import a project module: the package face (so `import seqmodel.errors`
stays light) and the CLI (so `seqmodel --help` does not wait for torch)."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported project module, line, inside a function)] for every `.py` under `root`."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    found = defaultdict(list)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.split(".")[0] == root.name and target != name:
                    found[name].append((target, node.lineno, id(node) in local))
    return dict(found)


def room(module: str) -> str:
    """'seqmodel.training.train' -> 'training'; a flat module is its own room ('task', 'api' ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def circles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    edges = {m: {t for t, _, _ in targets} for m, targets in graph.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


FORBIDDEN = {
    "model": {"task", "generate", "conformance", "recipe", "data", "interop", "training", "api", "cli"},
    "recipe": {"task", "generate", "conformance", "data", "interop", "training", "api", "cli"},
    "interop": {"data", "training", "api", "cli"},
    "data": {"interop", "training", "api", "cli"},
    "training": {"api", "cli"},
    "task": {"recipe", "data", "interop", "training", "api", "cli"},
    "generate": {"recipe", "data", "interop", "training", "api", "cli"},
    "conformance": {"recipe", "data", "interop", "training", "api", "cli"},
    "api": {"cli"},
} | {leaf: {"model", "task", "generate", "conformance", "recipe", "data", "interop", "training", "api", "cli"}
     for leaf in LEAVES}
"""room -> the rooms it must not import (the arrows above, pointing down only)."""


def violations(graph: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target, line, local in targets:
            if room(target) in FORBIDDEN.get(room(module), ()):
                problems.append(f"{module}:{line} imports {target} ({room(module)} must not import {room(target)})")
            if local and module not in LAZY_ALLOWED and room(module) != "cli":
                problems.append(f"{module}:{line} imports {target} inside a function (only the CLI may)")
    return problems


def test_imports_point_one_way_with_no_function_local_imports_outside_the_cli():
    assert violations(imports(PACKAGE)) == []


def test_no_circles_counting_imports_inside_functions_and_under_type_checking():
    assert circles(imports(PACKAGE)) == []


def test_parsing_a_recipe_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, seqmodel.recipe; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def make_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "seqmodel"


def test_the_checks_see_a_circle_through_a_function_local_import(tmp_path):
    pkg = make_package(tmp_path, {
        "seqmodel/__init__.py": "",
        "seqmodel/training/__init__.py": "",
        "seqmodel/training/train.py": "from seqmodel.training import warm_start\n",
        "seqmodel/training/warm_start.py": "def f():\n    from seqmodel.training.train import Trainer\n",
    })
    graph = imports(pkg)
    assert circles(graph) == [["seqmodel.training.train", "seqmodel.training.warm_start"]]
    assert violations(graph) == ["seqmodel.training.warm_start:2 imports seqmodel.training.train inside a function (only the CLI may)"]


def test_the_checks_see_an_upward_import_and_a_type_checking_circle(tmp_path):
    pkg = make_package(tmp_path, {
        "seqmodel/__init__.py": "",
        "seqmodel/task.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from seqmodel.data.store import X\n",
        "seqmodel/data/__init__.py": "",
        "seqmodel/data/store.py": "from seqmodel import task\n",
    })
    graph = imports(pkg)
    assert circles(graph) == [["seqmodel.data.store", "seqmodel.task"]]
    assert violations(graph) == ["seqmodel.task:3 imports seqmodel.data.store (task must not import data)"]


def plugin_imports() -> set[tuple[str, str]]:
    """(module, name) of every `from seqmodel... import name` in the built-in and example plugins."""
    found = set()
    for folder in ("tokenizers", "plugins"):
        for path in (PACKAGE.parent / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "seqmodel":
                    found |= {(node.module, a.name) for a in node.names}
    return found


def test_every_name_a_plugin_imports_from_seqmodel_is_there():
    """Third-party plugins import from the flat plugin-facing modules; the example kmer plugin and
    the built-ins are the witnesses that those paths still hold every name."""
    used = plugin_imports()
    assert {m for m, _ in used} >= {"seqmodel.plugin", "seqmodel.segments", "seqmodel.errors", "seqmodel.config"}
    missing = [f"{m}.{n}" for m, n in sorted(used) if not hasattr(importlib.import_module(m), n)
               and importlib.util.find_spec(f"{m}.{n}") is None]
    assert missing == []
