"""The training split's texts as a tokenizer's `fit` reads them: a stream, optionally bounded, counted.

Vocabulary building reads field values one at a time, never the corpus joined into one string.
A bound (`fit_max_chars`) stops the stream after that many characters, cutting the last document
there, so a bounded fit equals an unbounded fit on the truncated text. What was read is reported
in one stderr line, e.g. ``seqmodel: char tokenizer: 84 characters from 5,057,280 characters of text``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

from seqmodel.errors import UserError


class TextStream:
    """Iterates the texts of `values`, stopping after `limit` characters (0: no limit).

    Attributes:
        chars: characters yielded so far.
        bounded: True once the limit stopped the stream before the split's end.
    """

    def __init__(self, values: Iterable[object], limit: int, who: str) -> None:
        self.values, self.limit, self.who = values, limit, who
        self.chars, self.bounded = 0, False

    def __iter__(self) -> Iterator[str]:
        texts = _strings(self.values, self.who)
        for text in texts:
            if self.limit and self.chars + len(text) >= self.limit:
                cut = text[: self.limit - self.chars]
                self.chars += len(cut)
                yield cut
                self.bounded = len(cut) < len(text) or any(texts)
                return
            self.chars += len(text)
            yield text

    def report(self, result: str) -> None:
        """One stderr line: what was built (`result`) from how much text."""
        bound = f" (stopped at fit_max_chars = {self.limit:,})" if self.bounded else ""
        print(f"seqmodel: {self.who}: {result} from {self.chars:,} characters of text{bound}", file=sys.stderr)


def _strings(values: Iterable[object], who: str) -> Iterator[str]:
    """`values`, each checked to be a string (a tokenizer fed the wrong field gets a one-line error)."""
    for text in values:
        if not isinstance(text, str):
            raise UserError(f"{who}: expected text (a string) in the training split, got {type(text).__name__}")
        yield text
