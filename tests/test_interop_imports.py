"""The interop room's import rules (layout.md): converters are mappings over a loaded pipeline, so
`seqmodel/interop/` never imports `training/`, `api` or `cli/`, and imports seqmodel modules only
at the top of a module (never inside a function)."""

import ast
from pathlib import Path

ROOM = Path(__file__).resolve().parents[1] / "seqmodel" / "interop"
FORBIDDEN = ("seqmodel.training", "seqmodel.api", "seqmodel.cli")


def seqmodel_imports(tree: ast.Module) -> list[tuple[ast.stmt, str]]:
    """(import statement, the full name of each seqmodel module or member it imports)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, a.name) for a in node.names if a.name.split(".")[0] == "seqmodel"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "seqmodel":
            found += [(node, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_interop_imports_only_what_lies_below_it_and_only_at_module_level():
    problems = []
    for path in sorted(ROOM.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node, name in seqmodel_imports(tree):
            if name.startswith(FORBIDDEN) or name in ("seqmodel.api", "seqmodel.cli"):
                problems.append(f"{path.name}:{node.lineno} imports {name}")
            if node not in tree.body:
                problems.append(f"{path.name}:{node.lineno} imports {name} inside a function or block")
    assert not problems, problems
    assert len(list(ROOM.glob("*.py"))) >= 4  # __init__, origin, hf_gpt2, onnx, target
