"""Attention forward+backward time per mask pattern and sequence length.

Ways to apply the same mask predicate: the `is_causal` fast path of
`scaled_dot_product_attention` (where it applies), SDPA with a dense boolean mask built from
the predicate, a naive einsum + masked softmax, and (on CUDA; torch has no CPU backward for it)
compiled FlexAttention with the block mask `[model] attention = "flex"` uses. Medians over
repeats, measured side by side; masks are rebuilt in every call, as in a forward pass.

    python benchmarks/attention.py [--device cuda] [--lengths 128 512 1024] [--json out.json]
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
from seqmodel.model.flex import block_mask, flex_attention

PATTERNS = ["causal", "full", "sliding_window:64", "prefix", "segment", "local:32|causal"]


def view(B: int, L: int, device: torch.device) -> TokenView:
    index = torch.arange(L, device=device).expand(B, L)
    segment = (index >= L // 4).long()  # a prefix segment of L/4 tokens, then the rest
    doc = index // 128
    zeros = torch.zeros(B, L, dtype=torch.long, device=device)
    return TokenView(index, segment, doc, index, zeros, {})


def naive(q, k, v, mask):
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm up (and compile)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def measure(pattern: str, L: int, B: int, H: int, D: int, repeats: int, device: torch.device, dtype: torch.dtype) -> dict:
    q, k, v = (torch.randn(B, H, L, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    meta = view(B, L, device)
    valid = torch.ones(B, L, dtype=torch.bool, device=device)
    mask_value = parse_mask(pattern)

    def run(kind):
        def step():
            if kind == "fast":
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif kind == "flex":
                out = flex_attention(q, k, v, block_mask(mask_value, meta, meta, valid))
            else:
                m = dense_mask(mask_value, meta, meta, valid)  # built per call, as in a forward pass
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=m) if kind == "dense" else naive(q, k, v, m)
            out.sum().backward()
        return step

    row = {"pattern": pattern, "length": L}
    for kind in ("fast", "dense", "naive", "flex"):
        skip = kind == "fast" and pattern != "causal" or kind == "flex" and device.type != "cuda"
        row[kind + "_ms"] = None if skip else timed(run(kind), repeats, device)
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--json", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = [measure(p, L, args.batch, args.heads, args.head_dim, args.repeats, device, dtype) for L in args.lengths for p in PATTERNS]
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"forward+backward, B={args.batch} H={args.heads} D={args.head_dim} {args.dtype}, median of {args.repeats} (ms), torch {torch.__version__}, {where}\n")
    print("| pattern | length | SDPA is_causal | SDPA dense mask | naive einsum | FlexAttention | naive / dense | flex / dense |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        flex = "-" if r["flex_ms"] is None else f"{r['flex_ms'] / r['dense_ms']:.2f}x"
        print(f"| {r['pattern']} | {r['length']} | {fmt(r['fast_ms'])} | {fmt(r['dense_ms'])} | {fmt(r['naive_ms'])} | "
              f"{fmt(r['flex_ms'])} | {r['naive_ms'] / r['dense_ms']:.2f}x | {flex} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": where, "dtype": args.dtype, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
