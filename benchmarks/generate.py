"""Characters per second generating 2,000 new tokens, with and without the KV cache.

The model is a trained run (`--run DIR`) or, for speed alone, a freshly initialised char model
at nanoGPT's default Shakespeare shape (6 layers, 6 heads, 384 wide, context 256, 65 characters).
Both paths use the same windowing rule, so they generate the same text (checked here too).

    python benchmarks/generate.py [--run runs/char_lm] [--tokens 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from seqmodel.generate import choose_token, generate
from seqmodel.model.config import ModelConfig, SampleConfig
from seqmodel.model.transformer import Transformer
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment


def model_and_prompt(run: str | None):
    if run:
        import seqmodel

        r = seqmodel.load(run, device="cpu")
        core, task = r.pipeline.module.core, r.task
        return core, task.modality, task.encode_prompt("\n"), f"trained run {run}"
    torch.manual_seed(0)
    cfg = ModelConfig(layers=6, heads=6, d_model=384, context=256)
    core = Transformer(cfg, [ModalitySpec("text", vocab_size=65)], outputs=("text",)).eval()
    return core, "text", torch.tensor([0]), "untrained, nanoGPT default Shakespeare shape"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run directory (default: an untrained default-shape model)")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    core, modality, prompt, what = model_and_prompt(args.run)
    cfg = SampleConfig(temperature=0.8, top_k=200, seed=1337)
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs: dict[bool, list[int]] = {}
    for _ in range(args.repeats):
        for cached in (True, False):
            g = torch.Generator().manual_seed(cfg.seed)
            t = time.perf_counter()
            outputs[cached] = generate(core, [Segment(modality, ids=prompt)], args.tokens,
                                       lambda lg: choose_token(lg, cfg, g), use_cache=cached)
            times[cached].append(time.perf_counter() - t)
    med = {c: statistics.median(v) for c, v in times.items()}
    rows = {"kv_cache": {"median_s": med[True], "tokens_per_s": args.tokens / med[True]},
            "recompute": {"median_s": med[False], "tokens_per_s": args.tokens / med[False]},
            "speedup": med[False] / med[True], "same_output": outputs[True] == outputs[False],
            "model": what, "context": core.cfg.context, "threads": torch.get_num_threads()}
    print(f"{args.tokens} new tokens, {what}, context {core.cfg.context}, median of {args.repeats}, {torch.get_num_threads()} threads\n")
    print("| path | median s | tokens/s |")
    print("| --- | ---: | ---: |")
    print(f"| KV cache | {med[True]:.2f} | {args.tokens / med[True]:,.0f} |")
    print(f"| recompute context | {med[False]:.2f} | {args.tokens / med[False]:,.0f} |")
    print(f"\nspeed-up {rows['speedup']:.1f}x; identical samples: {rows['same_output']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
