"""Recipes by name: the ones shipped with seqmodel (`seqmodel run char_lm`, `seqmodel recipes`).

A wheel carries the repository's recipes/ folder as ``seqmodel/recipes``; an editable install
finds it beside the package. Anything that looks like a path (a ``/`` or a ``.toml`` suffix) is a
path, never a name.
"""

from __future__ import annotations

from pathlib import Path

from seqmodel.errors import UserError


def recipe_dirs() -> list[Path]:
    """Where shipped recipes live: inside the installed package, or the repository's recipes/."""
    package = Path(__file__).resolve().parent.parent
    return [d for d in (package / "recipes", package.parent / "recipes") if d.is_dir()]


def shipped() -> dict[str, Path]:
    """Recipe name -> file, for every shipped recipe."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for path in sorted(d.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def resolve(name_or_path: str | Path) -> Path:
    """The recipe file a command-line argument means: a path as given, else a shipped recipe's name."""
    text = str(name_or_path)
    if "/" in text or text.endswith(".toml") or Path(text).exists():
        return Path(text)
    presets = shipped()
    if text in presets:
        return presets[text]
    raise UserError(f"{text}: no such recipe file, and no shipped recipe of that name "
                    f"(shipped: {', '.join(presets) or 'none'}; `seqmodel recipes` lists them)")


def summary(path: Path, width: int = 100) -> str:
    """A recipe's description: the first sentence of the comment paragraph after its command line."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text and words:
            break
        words += text.split()
    sentence = " ".join(words).split(". ")[0].split(": ")[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[: width - 3].rstrip() + "..."
