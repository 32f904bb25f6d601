"""Milliseconds per training step of a recipe's model under variants of its settings, side by side.

    python benchmarks/step_time.py recipes/char_lm.toml \
        --variant "fp32 GELU=model.mlp=gelu,train.precision=fp32" \
        --variant "bf16 SwiGLU=model.mlp=swiglu,train.precision=bf16" [--reps 10] [--json OUT]

Each variant is a name and comma-separated `--set` overrides. Every variant's model is built from
the recipe (tokenizers fitted, the first training batch drawn once) in this process; then one
step each (forward and backward under the variant's autocast, AdamW step) is timed in turn,
`--reps` rounds, so all variants see the same load. Prints the median per variant and its speed
relative to the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def build(recipe: Path, overrides: list[str]):
    from seqmodel.data.pipeline import Pipeline
    from seqmodel.recipe.schema import load_recipe
    from seqmodel.task import Slice
    from seqmodel.training.train import resolved_precision

    pipe = Pipeline(load_recipe(recipe, overrides))
    pipe.fit()
    module = pipe.module.train()
    size = pipe.recipe.train.batch_size
    batch = pipe.task.batches("train", True).batch(Slice(0, 0, 0, size, size))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)
    bf16 = resolved_precision(pipe.recipe.train.precision, cpu=True) == "bf16"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = module(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=KEY=VALUE,KEY=VALUE")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = {}
    for spec in args.variant:
        name, _, sets = spec.partition("=")
        variants[name] = [s for s in sets.split(",") if s]
    steps = {name: build(args.recipe, sets) for name, sets in variants.items()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(1000 * (time.perf_counter() - start))
    first = statistics.median(next(iter(times.values())))
    print(f"\n{args.recipe}, {args.reps} alternated rounds, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| variant | overrides | ms/step (median) | speed |\n| --- | --- | ---: | ---: |")
    rows = {}
    for name, ms in times.items():
        median = statistics.median(ms)
        rows[name] = {"overrides": variants[name], "ms_per_step": round(median, 1), "all_ms": [round(x, 1) for x in ms]}
        print(f"| {name} | {' '.join(variants[name]) or '-'} | {median:.0f} | {first / median:.2f}x |")
    result = {"recipe": str(args.recipe), "reps": args.reps, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
