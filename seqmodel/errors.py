"""User-facing errors: one line, naming the file, key or plugin, and what was expected.

The CLI prints `UserError`s as ``error: <message>`` and exits with code 2, without a traceback.
Anything else is a bug in seqmodel or a plugin and keeps its traceback.
"""

SHOWN = 80  # characters of a user's value echoed in an error
LONGEST = 2000  # characters of a whole message; a longer one loses its middle


def cut(text: str, limit: int = SHOWN) -> str:
    """`text` if short, else its beginning and its length: a 1 MB bad value is not echoed whole."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit - 24]}... ({len(text):,} characters)"


def shown(value) -> str:
    """`repr(value)`, cut to `SHOWN` characters."""
    return cut(repr(value))


class UserError(Exception):
    """A mistake in the user's input (recipe, file, argument): reported in one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        text = " ".join(str(message).split())
        if len(text) > LONGEST:
            text = f"{text[:LONGEST // 2]} ... {text[-LONGEST // 2:]}"
        super().__init__(text)
