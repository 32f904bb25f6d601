"""`seqmodel` command line: one module per family of commands (`train`: run, prepare, check;
`infer`: sample, score, eval, predict, tokenize; `export`; `inspect`: mask show, runs, recipes,
plugins). User mistakes print one line and exit with code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from seqmodel import progress
from seqmodel._version import __version__
from seqmodel.cli import export, infer, inspect, train
from seqmodel.cli.args import OneLineParser
from seqmodel.cli.launch import WORKER_ERRORS
from seqmodel.errors import UserError, cut

FAMILIES = (train, infer, export, inspect)


def parser() -> tuple[OneLineParser, dict]:
    """The argument parser and the command table (command name -> handler)."""
    ap = OneLineParser(prog="seqmodel", description="One transformer over sets of tokens, any modality.")
    ap.add_argument("--version", action="version", version=f"seqmodel {__version__}")
    ap.set_defaults(no_progress=False)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    commands = {}
    for family in FAMILIES:
        commands |= family.add_parsers(sub)
    p = sub.add_parser("completion", help="print a shell completion script: seqmodel completion bash > ~/.seqmodel.bash")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    commands["completion"] = cmd_completion
    return ap, commands


def cmd_completion(args) -> int:
    try:
        import shtab
    except ImportError:
        raise UserError("completion: needs the `shtab` package (pip install shtab)") from None
    print(shtab.complete(parser()[0], args.shell))
    return 0


def not_utf8(argv: list[str]) -> str | None:
    """A one-line complaint about the first argument that is not valid UTF-8 text, or None.
    Python hands undecodable bytes over as lone surrogates, which no command can print or encode."""
    for i, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as err:
            return (f"argument {i} is not valid UTF-8 text (at character {err.start}: "
                    f"{cut(ascii(arg), 60)}); seqmodel reads its command line as UTF-8")
    return None


def report(err: UserError) -> None:
    """Print a user error; a launched worker leaves it for the launcher, which prints it once
    (unless it is the consequence of another worker's failure, which the launcher names)."""
    folder = os.environ.get(WORKER_ERRORS)
    if folder and os.path.isdir(folder) and getattr(err, "report_to_launcher", True):
        try:
            Path(folder, f"rank{os.environ.get('RANK', '0')}").write_text(str(err), encoding="utf-8")
            return
        except OSError:
            pass
    print(f"error: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    problem = not_utf8(argv)
    if problem:
        print(f"error: seqmodel: {problem}", file=sys.stderr)
        return 2
    ap, commands = parser()
    args = ap.parse_args(argv)
    progress.ENABLED = not args.no_progress
    try:
        return commands[args.command](args)
    except UserError as err:
        report(err)
        return err.exit_code
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
