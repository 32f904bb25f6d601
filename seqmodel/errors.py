"""User-facing errors: one line, naming the file, key or plugin, and what was expected.

The CLI prints `UserError`s as ``error: <message>`` and exits with code 2, without a traceback.
Anything else is a bug in seqmodel or a plugin and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (recipe, file, argument): reported in one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
