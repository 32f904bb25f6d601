"""Attention forward+backward time per mask pattern and sequence length.

Three ways to apply the same mask predicate: the `is_causal` fast path of
`scaled_dot_product_attention` (where it applies), SDPA with a dense boolean mask built from
the predicate, and a naive einsum + masked softmax. Medians over repeats, measured side by side.

    python benchmarks/attention.py [--lengths 128 512 1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from seqmodel.masks import TokenView, dense_mask, parse_mask

PATTERNS = ["causal", "full", "sliding_window:64", "prefix", "segment", "local:32|causal"]


def view(B: int, L: int) -> TokenView:
    index = torch.arange(L).expand(B, L)
    segment = (index >= L // 4).long()  # a prefix segment of L/4 tokens, then the rest
    doc = index // 128
    zeros = torch.zeros(B, L, dtype=torch.long)
    return TokenView(index, segment, doc, index, zeros, {})


def naive(q, k, v, mask):
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)


def timed(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def measure(pattern: str, L: int, B: int, H: int, D: int, repeats: int) -> dict:
    q, k, v = (torch.randn(B, H, L, D, requires_grad=True) for _ in range(3))
    meta = view(B, L)
    valid = torch.ones(B, L, dtype=torch.bool)
    mask_value = parse_mask(pattern)

    def run(kind):
        def step():
            if kind == "fast":
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                m = dense_mask(mask_value, meta, meta, valid)  # built per call, as in a forward pass
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=m) if kind == "dense" else naive(q, k, v, m)
            out.sum().backward()
        return step

    row = {"pattern": pattern, "length": L}
    for kind in ("fast", "dense", "naive"):
        row[kind + "_ms"] = timed(run(kind), repeats) if kind != "fast" or pattern == "causal" else None
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = [measure(p, L, args.batch, args.heads, args.head_dim, args.repeats) for L in args.lengths for p in PATTERNS]
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    print(f"forward+backward, B={args.batch} H={args.heads} D={args.head_dim}, median of {args.repeats} (ms), torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| pattern | length | SDPA is_causal | SDPA dense mask | naive einsum | naive / dense |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['pattern']} | {r['length']} | {fmt(r['fast_ms'])} | {fmt(r['dense_ms'])} | {fmt(r['naive_ms'])} | {r['naive_ms'] / r['dense_ms']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
