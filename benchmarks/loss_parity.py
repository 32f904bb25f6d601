"""Loss after the same number of steps, seqmodel against nanoGPT, over several seeds.

One seed says little about "no worse loss": at 12 steps the spread between seeds of the same
program is as large as the gap between programs. This runs nanoGPT's `train.py` (a copy whose
only change is that its seed comes from $SEED) and `seqmodel run` at one of
`train_throughput.py`'s shapes for each seed and reports each program's mean training loss over
its last 5 iterations: per seed, the mean, the standard deviation, and the difference of means
with its standard error.

    python benchmarks/loss_parity.py --nanogpt PATH/TO/nanoGPT [--shape baby] [--seeds 0 1 2 3 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import LAST, SHAPES, prepare_nanogpt, run_nanogpt, run_seqmodel  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", type=Path, required=True, help="nanoGPT checkout or bare git directory")
    ap.add_argument("--shape", default="baby", choices=list(SHAPES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--iters", type=int, help="override the shape's iterations")
    ap.add_argument("--dropout", type=float, help="override the shape's dropout (both programs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra seqmodel --set (an ablation)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    shape = dict(SHAPES[args.shape], **{k: v for k, v in (("iters", args.iters), ("dropout", args.dropout)) if v is not None})
    losses: dict[str, list[float]] = {"nanoGPT": [], "seqmodel": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nano = prepare_nanogpt(args.nanogpt, tmp / "nanogpt")
        for seed in args.seeds:
            losses["nanoGPT"].append(run_nanogpt(nano, shape, seed)[1])
            losses["seqmodel"].append(run_seqmodel(shape, tmp / f"seq-{seed}", seed=seed, extra=args.set)[1])
            print(f"seed {seed}: nanoGPT {losses['nanoGPT'][-1]:.4f}  seqmodel {losses['seqmodel'][-1]:.4f}", file=sys.stderr)
    stats = {k: {"mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0, "losses": v} for k, v in losses.items()}
    n = len(args.seeds)
    diff = stats["seqmodel"]["mean"] - stats["nanoGPT"]["mean"]
    se = ((stats["seqmodel"]["sd"] ** 2 + stats["nanoGPT"]["sd"] ** 2) / n) ** 0.5
    print(f"\n### {args.shape}: {shape['iters']} iterations, dropout {shape['dropout']}, {n} seeds {args.seeds}" + (f", seqmodel {' '.join(args.set)}" if args.set else "") + "\n")
    print(f"| program | train loss, last {LAST} iters, per seed | mean | sd |")
    print("| --- | --- | ---: | ---: |")
    for k, s in stats.items():
        print(f"| {k} | {' '.join(f'{x:.4f}' for x in s['losses'])} | {s['mean']:.4f} | {s['sd']:.4f} |")
    print(f"\nseqmodel - nanoGPT: {diff:+.4f} (standard error {se:.4f})")
    result = {"shape": shape, "seeds": args.seeds, "set": args.set, "programs": stats, "difference": diff, "standard_error": se}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
