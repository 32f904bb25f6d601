"""Code blocks of the documentation, for tests that run them as a reader would.

A block is marked by an HTML comment on the line before its opening fence:
``<!-- test: NAME -->`` followed by a fenced block of Python."""

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def snippet(page: str, name: str) -> str:
    """The Python source of the block marked `name` in docs/`page`."""
    text = (DOCS / page).read_text(encoding="utf-8")
    found = re.search(rf"<!-- test: {re.escape(name)} -->\n```python\n(.*?)\n```", text, re.DOTALL)
    assert found, f"docs/{page} has no block marked <!-- test: {name} -->"
    return found.group(1) + "\n"
