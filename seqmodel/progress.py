"""Progress for every phase that takes a while: a tqdm bar on a terminal; in a log, a line once a
phase has run a couple of seconds and one when it ends (short phases stay silent); nothing at all
after `--no-progress`.

    for batch in progress(batches, "eval val", total=n):
        ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

ENABLED = True
"""False after `--no-progress`: no bars and no phase lines."""


def terminal() -> bool:
    return ENABLED and sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", quiet_below: float = 2.0,
             **tqdm_args: Any) -> Iterator[T]:
    """`items`, reporting progress on stderr as `desc`. Off the terminal, a phase that runs longer
    than `quiet_below` seconds says so in one line, and how long it took in another."""
    if terminal():
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True,
                        **tqdm_args)
        return
    if not ENABLED:
        yield from items
        return
    start, count, announced = time.perf_counter(), 0, False
    for item in items:
        if not announced and time.perf_counter() - start > quiet_below:
            of = f" of {total}" if total is not None else ""
            print(f"seqmodel: {desc}: {count}{of} {unit} done, still running ...", file=sys.stderr, flush=True)
            announced = True
        count += 1
        yield item
    if announced:
        print(f"seqmodel: {desc}: {count} {unit} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
