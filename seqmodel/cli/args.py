"""What every command's parser shares: one-line argument errors, `--set`, `--checkpoint`."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """Argument mistakes are one line (no usage dump), exit code 2. An `epilog` may be a function,
    called only when the help is shown (it may need to load plugins)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def add_overrides(p, help: str | None = None) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=help)


def add_checkpoint(p) -> None:
    p.add_argument("--checkpoint", default="latest", metavar="NAME",
                   help="which weights: latest (default), best ([train] keep_best) or a step number")


def add_run_options(p, checkpoint: bool = True) -> None:
    """`--checkpoint` (which weights) and `--member` (which member of a mixture run)."""
    if checkpoint:
        add_checkpoint(p)
    p.add_argument("--member", metavar="NAME", help="of a mixture run: the member whose task to use")
