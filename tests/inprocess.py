"""The seqmodel CLI called in this process (no interpreter start-up, no torch import per call),
with its exit code and output captured like `subprocess.run` would."""

import contextlib
import io
from dataclasses import dataclass

from seqmodel import cli


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def seqmodel(*args, check: bool = True) -> Done:
    """`seqmodel ARGS` in process; `check`: fail unless it exits 0."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as stop:  # argparse
            code = stop.code
    done = Done(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"seqmodel {' '.join(map(str, args))} exited {code}:\n{done.stderr[-3000:]}")
    return done


def errors(done) -> list[str]:
    """The lines of stderr that are not seqmodel's own notes (``seqmodel: ...``: fit reports,
    progress, warnings): a user error must be exactly one of them, starting with ``error:``."""
    return [line for line in done.stderr.splitlines() if not line.startswith("seqmodel: ") and line.strip()]
