"""Encoding long texts with a byte-level BPE tokenizer: in pieces, ASCII through the pre-token
cache (`bpe_words`), the rest through the library's parallel batch encoder; a stream of parts
(a large file) on every core, a worker process beside this one.

A text is cut before every newline that follows a non-space character: no GPT-2 pre-token spans
such a point and the regex has no look-behind, so the pieces encode exactly as the whole text
would. The pre-token cache is Python, so it runs on one core; `encode_stream` gives a share of
a long stream of parts to worker processes (`Worker`: this module run on its own, without torch,
so one starts in a fraction of a second) and yields the ids in order.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from tokenizers import Tokenizer

from .bpe_words import WordCache, eligible

_CUT = re.compile(r"(?<=[^\s])(?=\n)")  # Python's \s covers every Unicode White_Space character
SHORT = 4096  # characters below which one `encode` call beats the batch encoder
WINDOW = 256  # pieces encoded together (about 2 M characters)
POOL_AFTER = 4  # parts of a stream encoded here before workers start (a few MB pays their start-up)


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pieces(text: str, size: int = 8192) -> list[str]:
    """`text` in pieces of about `size` characters, each cut before a newline that follows a
    non-space character (see the module docstring); joined, they are `text`."""
    out, start = [], 0
    while (cut := _CUT.search(text, start + size) if start + size < len(text) else None) is not None:
        out.append(text[start : cut.start()])
        start = cut.start()
    out.append(text[start:])
    return out


class TextEncoder:
    """Token ids of texts for one tokenizer state; `cuttable`: the state lets texts be cut into
    pieces (no normaliser, GPT-2's split without a prefix space, no added token holding a space)."""

    def __init__(self, tok: Tokenizer, cuttable: bool) -> None:
        self.tok, self.cuttable = tok, cuttable
        added = [t.content for t in tok.get_added_tokens_decoder().values()]
        self.words = WordCache(tok, added) if cuttable and eligible(tok) else None

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text`, (T,) int64, exactly the library's `encode(text)`."""
        if not self.cuttable or len(text) < SHORT and not (self.words and self.words.takes(text)):
            return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        return np.concatenate(list(self._piece_ids(self._cut(text))))

    def _cut(self, text: str) -> list[str]:
        """`text` in pieces; a piece the pre-token cache does not take is cut at every cut point
        (a line each), so that one curly quote sends a line, not the piece, to the library."""
        if self.words is None:
            return pieces(text)
        return [line for piece in pieces(text) for line in ([piece] if self.words.takes(piece) else pieces(piece, 1))]

    def _piece_ids(self, texts: list[str]) -> Iterator[np.ndarray]:
        """Each piece's ids, window by window: those the pre-token cache takes from it, the
        others from the batch encoder (all in one call)."""
        tok, words = self.tok, self.words
        batch = getattr(tok, "encode_batch_fast", tok.encode_batch)  # _fast: no offsets (tokenizers >= 0.21)
        for start in range(0, len(texts), WINDOW):
            window = texts[start : start + WINDOW]
            cached = [words is not None and words.takes(t) for t in window]
            fast = iter(words.encode([t for t, c in zip(window, cached) if c]) if any(cached) else ())
            slow = iter(batch([t for t, c in zip(window, cached) if not c], add_special_tokens=False)
                        if not all(cached) else ())
            for c in cached:
                yield next(fast) if c else np.asarray(next(slow).ids, dtype=np.int64)

    def encode_stream(self, texts: Iterable[str], check: Callable[[str], None] = lambda text: None,
                      workers: int | None = None) -> Iterator[np.ndarray]:
        """The ids of each text of a stream, in order (`check` sees each text first). After
        `POOL_AFTER` texts, `workers` processes (default: one per further core) encode one text
        each while this one encodes the next."""
        workers = max(cores() - 1, 0) if workers is None else workers
        texts, pool = iter(texts), []
        try:
            for n, text in enumerate(texts):
                check(text)
                if n < POOL_AFTER or not workers:
                    yield self.encode(text)
                    continue
                pool = pool or [Worker(self) for _ in range(workers)]
                batch = [text, *itertools.islice(texts, len(pool))]
                for t in batch[1:]:
                    check(t)
                *remote, mine = batch
                sent = [w.send(t) for w, t in zip(pool, remote)]
                ids = self.encode(mine)
                for ok, w, t in zip(sent, pool, remote):
                    yield w.result(t) if ok else self.encode(t)
                yield ids
        finally:
            for w in pool:
                w.close()


class Worker:
    """A process that encodes texts for one tokenizer state (``python -m
    seqmodel_tokenizers.bpe_encode``: it imports neither torch nor the caller's main module). One
    text at a time: `send` it, then take its `result`. A worker that stopped leaves the text to
    the caller (`send` False) or encodes it here (`result`)."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder, tok = encoder, encoder.tok
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env)
        state = {"state": tok.to_str(), "encode_special_tokens": tok.encode_special_tokens, "cuttable": encoder.cuttable}
        self.alive = self._write(json.dumps(state).encode())

    def _write(self, data: bytes) -> bool:
        try:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
            return True
        except OSError:
            return False

    def send(self, text: str) -> bool:
        self.alive = self.alive and self._write(text.encode())
        return self.alive

    def result(self, text: str) -> np.ndarray:
        head = self.proc.stdout.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        data = self.proc.stdout.read(size) if size > 0 else b""
        if len(data) != size:  # the worker stopped
            self.alive = False
            return self.encoder.encode(text)
        return np.frombuffer(data, dtype=np.int64)

    def close(self) -> None:
        """Stop the worker (a result not taken is dropped: its pipe closed, it stops too)."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _serve() -> None:
    """The worker's loop: a tokenizer state, then texts in, their ids out (length-prefixed)."""
    read, write = sys.stdin.buffer.read, sys.stdout.buffer.write

    def message() -> bytes | None:
        head = read(8)
        return read(struct.unpack("<Q", head)[0]) if len(head) == 8 else None

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's: it closes the pipes
    state = json.loads(message())
    tok = Tokenizer.from_str(state["state"])
    tok.encode_special_tokens = state["encode_special_tokens"]
    encoder = TextEncoder(tok, state["cuttable"])
    with contextlib.suppress(BrokenPipeError):
        while (text := message()) is not None:
            ids = encoder.encode(text.decode()).tobytes()
            write(struct.pack("<Q", len(ids)) + ids)
            sys.stdout.buffer.flush()


if __name__ == "__main__":
    _serve()
