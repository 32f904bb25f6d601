"""Pretrain-then-fine-tune against training from scratch, on Shakespeare (issue 22's exercise).

Runs recipes/bible_char_pretrain.toml (unless --pretrained names a finished run), then
recipes/shakespeare_finetune.toml twice: from the pretrained run, and from scratch (the pretrained
run's shape with fresh weights, `train.init_weights=false`, and the baby recipe's lr 1e-3), then
from scratch for as many steps as pretraining and fine-tuning together (equal total compute: the
same shape and batch). Prints the validation
loss (nats/char, Shakespeare's validation split, 20 batches) at every evaluation with the wall
time, and writes them as JSON.

    python benchmarks/finetune.py [--pretrained runs/bible_char_pretrain] [--steps 500] [--threads 1] [--json out.json]

On a machine shared with other jobs, `--threads 1` avoids OpenMP threads waiting for each other
(7x faster than 2 threads on a 2-core machine running 7 other processes, measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def evals(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "val_loss": r["val_loss"], "elapsed_s": r["elapsed_s"]} for r in rows if "val_loss" in r]


def train(recipe: str, out: Path, overrides: list[str]) -> list[dict]:
    import seqmodel

    seqmodel.run(REPO / "recipes" / recipe, overrides, out=out, progress=False)
    return evals(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", type=Path, help="a finished bible_char_pretrain run (default: train one)")
    ap.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                    help="overrides of the pretraining recipe (e.g. a text source over the cached files)")
    ap.add_argument("--steps", type=int, default=500, help="fine-tuning steps")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    common = [f"train.steps={args.steps}", "sample.num_samples=0"] + ([f"train.threads={args.threads}"] if args.threads else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        pretrained = args.pretrained
        if pretrained is None:
            pretrained = root / "pretrain"
            train("bible_char_pretrain.toml", pretrained, args.pretrain_set + common[1:])
        pre = evals(pretrained)
        total = pre[-1]["step"] + args.steps
        source = [f'train.init_from="{pretrained.resolve()}"']
        scratch = source + ["train.init_weights=false", "train.lr=1e-3", "train.min_lr=1e-4"]
        results = {
            "pretraining": pre,
            "fine-tuned": train("shakespeare_finetune.toml", root / "finetuned", common + source),
            "from scratch": train("shakespeare_finetune.toml", root / "scratch", common + scratch),
            f"from scratch, {total} steps": train("shakespeare_finetune.toml", root / "scratch_long",
                                                   common + scratch + [f"train.steps={total}", f"train.eval_every={args.steps // 5}"]),
        }
    print(f"{'run':<28} {'step':>6} {'val loss':>9} {'wall s':>8}")
    for name, rows in results.items():
        for r in rows:
            print(f"{name:<28} {r['step']:>6} {r['val_loss']:>9.4f} {r['elapsed_s']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
