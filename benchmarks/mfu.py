"""Training tokens/s and model FLOPs utilisation (MFU) of the decoder, counted as nanoGPT counts it.

FLOPs per token follow the PaLM paper (appendix B): 6 N + 12 L H Q T, with N the parameters
without position tables, L layers, H heads, Q the head width and T the context. MFU is the
achieved FLOP/s over the device's peak (default: H100 SXM dense bf16, 989 TFLOP/s; pass
`--peak-tflops` for another device). Each step is the real one of `seqmodel run` for a language
model: the core `Transformer`, its tied output head, cross-entropy, gradient clipping and fused
AdamW, under bf16 autocast and `torch.compile` when asked. Token ids are random: the number is
about the model and the step, not the data.

    python benchmarks/mfu.py --device cuda --precision bf16 --compile [--shapes gpt2 shakespeare] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
import torch.nn.functional as F

from seqmodel.model.config import ModelConfig
from seqmodel.model.transformer import Transformer
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import dense_set

SHAPES = {  # nanoGPT's GPT-2 124M config and its default Shakespeare char config
    "gpt2": dict(layers=12, heads=12, d_model=768, context=1024, batch=12, vocab=50304, dropout=0.0),
    "shakespeare": dict(layers=6, heads=6, d_model=384, context=256, batch=64, vocab=65, dropout=0.2),
}


def flops_per_token(model: Transformer, cfg: ModelConfig) -> float:
    """PaLM's 6N + 12 L H Q T (N without position tables and the modality embedding)."""
    skip = {id(p) for p in model.positions.parameters()}
    if model.modality_emb is not None:
        skip.add(id(model.modality_emb.weight))
    n = sum(p.numel() for p in model.parameters() if id(p) not in skip)
    return 6 * n + 12 * cfg.layers * cfg.d_model * cfg.context  # H * Q = d_model


def build(shape: dict, device: torch.device) -> tuple[Transformer, ModelConfig]:
    cfg = ModelConfig(layers=shape["layers"], heads=shape["heads"], d_model=shape["d_model"],
                      context=shape["context"], dropout=shape["dropout"])
    return Transformer(cfg, [ModalitySpec("text", vocab_size=shape["vocab"])], outputs=("text",)).to(device), cfg


def measure(shape: dict, device: torch.device, precision: str, compile: bool, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model, cfg = build(shape, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    forward = torch.compile(model) if compile else model
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    B, T, V = shape["batch"], shape["context"], shape["vocab"]

    def step():
        chunk = torch.randint(V, (B, T + 1), device=device)
        ts = dense_set("text", ids=chunk[:, :-1], targets=chunk[:, 1:])
        with amp:
            hidden = forward(ts)
            logits = model.output("text", hidden, ts)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ts.inputs["text"].targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        float(step())
        times.append(time.perf_counter() - t)
    ms = statistics.median(times[warmup:]) * 1000
    tokens_per_s = B * T / ms * 1000
    fpt = flops_per_token(model, cfg)
    return {"params_m": model.num_parameters() / 1e6, "median_ms": ms, "tokens_per_s": tokens_per_s,
            "flops_per_token": fpt, "tflops": fpt * tokens_per_s / 1e12}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: 989, H100 SXM bf16 dense, on CUDA)")
    ap.add_argument("--batch", type=int, help="override the shapes' batch")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    peak = args.peak_tflops or (989.0 if device.type == "cuda" else None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    rows = {}
    for s in args.shapes:
        shape = dict(SHAPES[s], **({"batch": args.batch} if args.batch else {}))
        rows[s] = dict(measure(shape, device, args.precision, args.compile, args.steps, args.warmup), shape=shape)
        rows[s]["mfu"] = rows[s]["tflops"] / peak if peak else None
    print(f"{name}, {args.precision}{', compile' if args.compile else ''}, torch {torch.__version__}, "
          f"median of {args.steps} steps after {args.warmup}; MFU against {peak or '?'} TFLOP/s\n")
    print("| shape | params (M) | batch x context | ms/iter | tokens/s | TFLOP/s | MFU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s, r in rows.items():
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {s} | {r['params_m']:.1f} | {r['shape']['batch']} x {r['shape']['context']} | {r['median_ms']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | {mfu} |")
    result = {"device": name, "precision": args.precision, "compile": args.compile, "peak_tflops": peak, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
