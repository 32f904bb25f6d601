"""Byte-level BPE training and encoding speed on the Shakespeare corpus (the bpe tokenizer plugin).

For each vocabulary size: train `BPETokenizer` on the corpus (the full 5,057,280 characters, or
the training split with ``--text train``), then encode the same text with its batch-encoding fast
path. Times are medians over ``--repeats`` runs; tokens and characters per token come from the
last one (training is deterministic, so every repeat gives the same tokenizer).

    python benchmarks/bpe_train.py [--vocab-sizes 1000 4000] [--repeats 3] [--text full|train] [--json out.json]

Threads: the `tokenizers` library trains and batch-encodes on every core (RAYON_NUM_THREADS
limits it); the table header says how many the machine has.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

try:
    from seqmodel_plugins.sources.text import cache_root, shakespeare_text
    from seqmodel_tokenizers.bpe import BPEConfig, BPETokenizer
except ImportError:  # a checkout that is not pip-installed
    _repo = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_repo), str(_repo / "plugins"), str(_repo / "tokenizers")]
    from seqmodel_plugins.sources.text import cache_root, shakespeare_text
    from seqmodel_tokenizers.bpe import BPEConfig, BPETokenizer


def measure(text: str, vocab_size: int, repeats: int) -> dict:
    """Median train and encode seconds for one vocabulary size.

    Args:
        text: the corpus to train on and encode.
        vocab_size: the BPE vocabulary size.
        repeats: how many times to train and encode.

    Returns:
        ``{"vocab_size", "train_s", "encode_s", "tokens", "chars", "chars_per_token", "train_runs", "encode_runs"}``.
    """
    train_runs, encode_runs = [], []
    for _ in range(repeats):
        tok = BPETokenizer(BPEConfig(vocab_size=vocab_size), "text")
        start = time.perf_counter()
        tok.fit([text])
        train_runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        ids = tok.encode_ids(text)
        encode_runs.append(time.perf_counter() - start)
    assert tok.decode_ids(ids) == text
    return {"vocab_size": tok.spec().vocab_size, "train_s": statistics.median(train_runs),
            "encode_s": statistics.median(encode_runs), "tokens": len(ids), "chars": len(text),
            "chars_per_token": len(text) / len(ids), "train_runs": train_runs, "encode_runs": encode_runs}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a Markdown table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text", choices=["full", "train"], default="full",
                        help="the whole corpus, or its training split (the first 90 %%)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    text = shakespeare_text(cache_root())
    if args.text == "train":
        text = text[: int(len(text) * 0.9)]
    rows = [measure(text, v, args.repeats) for v in args.vocab_sizes]
    result = {"corpus": f"shakespeare ({args.text})", "chars": len(text), "repeats": args.repeats,
              "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "rows": rows}
    print(f"{len(text):,} characters, median of {args.repeats}, {os.cpu_count()} CPUs\n")
    print("| vocab size | train s | encode s | tokens | chars/token |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['vocab_size']} | {r['train_s']:.2f} | {r['encode_s']:.2f} | {r['tokens']:,} | {r['chars_per_token']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
