"""Training throughput of the char model against nanoGPT, side by side on the same machine.

Runs nanoGPT's own `train.py` (unmodified, from a local checkout) and `seqmodel run` at the same
shapes on the same corpus, alternating them, and reports the median ms/iteration and tokens/s
of each, their ratio, and seqmodel's variants (bf16 autocast, torch.compile).

    python benchmarks/train_throughput.py --nanogpt PATH/TO/nanoGPT [--shapes baby default] [--json out.json]

PATH/TO/nanoGPT is a checkout (or a bare git directory) of karpathy/nanoGPT; without it only
seqmodel is measured. The Shakespeare corpus is written into nanoGPT's data folder in its own
format (uint16 ids of the sorted characters, 90/10 split), so both read identical data.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from seqmodel.training.cpu_memory import ENVIRONMENT
from seqmodel.training.train import cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # nanoGPT's CPU "baby GPT" and its default Shakespeare config
    "baby": dict(layers=4, heads=4, d_model=128, context=64, batch=12, dropout=0.0, iters=120),
    "default": dict(layers=6, heads=6, d_model=384, context=256, batch=64, dropout=0.2, iters=12),
}
SKIP = 3  # warm-up iterations left out of the medians


def corpus() -> str:
    from seqmodel_plugins.sources.text import ShakespeareConfig, ShakespeareSource

    src = ShakespeareSource(ShakespeareConfig())
    return src.split("train")[0]["text"] + src.split("val")[0]["text"]


def prepare_nanogpt(source: Path, work: Path) -> Path:
    """A nanoGPT work tree with data/shakespeare_char built from our corpus."""
    if (source / "train.py").is_file():
        subprocess.run(["cp", "-r", f"{source}/.", str(work)], check=True)
    else:  # a bare git directory
        work.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "--git-dir", str(source), "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "x", "-C", str(work)], input=archive, check=True)
    text = corpus()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    data = work / "data" / "shakespeare_char"
    data.mkdir(parents=True, exist_ok=True)
    ids[:n].tofile(data / "train.bin")
    ids[n:].tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    train = (work / "train.py").read_text()
    fixed = "torch.manual_seed(1337 + seed_offset)"
    assert fixed in train, "nanoGPT's seed line changed; update prepare_nanogpt"
    (work / "train_seeded.py").write_text(train.replace(fixed, "torch.manual_seed(int(os.environ['SEED']) + seed_offset)"))
    return work


LAST = 5  # iterations whose mean training loss is compared ("loss after the same number of steps")


def run_nanogpt(work: Path, shape: dict, seed: int | None = None, env: dict | None = None) -> tuple[list[float], float]:
    """nanoGPT's train.py as it is, with `env` added to its environment; with `seed`, a copy whose
    only change is that its hard-coded seed 1337 comes from $SEED (for loss spreads over seeds,
    never for timings)."""
    script = "train.py" if seed is None else "train_seeded.py"
    env = {**os.environ, **(env or {}), **({"SEED": str(seed)} if seed is not None else {})}
    cmd = [sys.executable, script, "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
           "--eval_interval=100000", "--eval_iters=1", "--log_interval=1", f"--max_iters={shape['iters']}",
           f"--lr_decay_iters={shape['iters']}", f"--block_size={shape['context']}", f"--batch_size={shape['batch']}",
           f"--n_layer={shape['layers']}", f"--n_head={shape['heads']}", f"--n_embd={shape['d_model']}",
           f"--dropout={shape['dropout']}", f"--out_dir={work / 'out'}"]
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True, env=env).stdout
    lines = re.findall(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms", out, re.M)
    # train.py runs iterations 0..max_iters (one more than asked); seqmodel's steps are 0..steps-1
    logged = [(float(loss), float(ms)) for it, loss, ms in lines if int(it) < shape["iters"]]
    assert len(logged) == shape["iters"], f"expected {shape['iters']} logged iterations from nanoGPT, got {len(logged)}"
    return [ms for _, ms in logged][SKIP:], statistics.mean(loss for loss, _ in logged[-LAST:])


def run_seqmodel(shape: dict, out: Path, precision: str = "fp32", compile: bool = False, seed: int = 1337,
                 extra: list[str] = ()) -> tuple[list[float], float]:
    sets = {"model.layers": shape["layers"], "model.heads": shape["heads"], "model.d_model": shape["d_model"],
            "model.context": shape["context"], "model.dropout": shape["dropout"], "train.batch_size": shape["batch"],
            "train.steps": shape["iters"], "train.log_every": 1, "train.eval_every": 100000, "train.eval_batches": 2,
            "train.checkpoint_every": 100000, "train.precision": f'"{precision}"', "train.compile": str(compile).lower(),
            "sample.num_samples": 0, "train.seed": seed}
    cmd = [sys.executable, "-m", "seqmodel", "run", str(REPO / "recipes" / "char_lm_baby.toml"), "--out", str(out), "--no-progress"]
    cmd += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    cmd += [a for kv in extra for a in ("--set", kv)]
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = shape["batch"] * shape["context"]
    ms = [1000 * tokens / r["tokens_per_s"] for r in rows][SKIP:]
    return ms, statistics.mean(r["train_loss"] for r in rows[-LAST:])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", type=Path, help="nanoGPT checkout or bare git directory")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per configuration")
    ap.add_argument("--variants", nargs="+", help="seqmodel variants (default: fp32, fp32+compile, and "
                    "bf16, bf16+compile where the CPU has bf16 instructions)")
    ap.add_argument("--iters", type=int, help="override the iterations per run")
    ap.add_argument("--nanogpt-kept-memory", action="store_true",
                    help="also run nanoGPT with glibc set (by environment) to keep freed memory, as seqmodel does")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.variants is None:
        args.variants = ["fp32", "fp32+compile"]
        if cpu_has_bf16():
            args.variants += ["bf16", "bf16+compile"]
        else:
            print("bf16 left out: this CPU emulates it (name it in --variants to measure it anyway)", file=sys.stderr)
    results = {"machine": os.uname().machine, "cpus": os.cpu_count(), "shapes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nano = prepare_nanogpt(args.nanogpt, tmp / "nanogpt") if args.nanogpt else None
        for name in args.shapes:
            shape = dict(SHAPES[name], **({"iters": args.iters} if args.iters else {}))
            times: dict[str, list[float]] = {}
            losses: dict[str, list[float]] = {}
            for r in range(args.rounds):
                if nano:
                    ms, loss = run_nanogpt(nano, shape)
                    times.setdefault("nanoGPT fp32", []).extend(ms)
                    losses.setdefault("nanoGPT fp32", []).append(loss)
                if nano and args.nanogpt_kept_memory:
                    ms, loss = run_nanogpt(nano, shape, env=ENVIRONMENT)
                    times.setdefault("nanoGPT fp32, freed memory kept", []).extend(ms)
                    losses.setdefault("nanoGPT fp32, freed memory kept", []).append(loss)
                for variant in args.variants:
                    ms, val = run_seqmodel(shape, tmp / f"{name}-{variant}-{r}", variant.split("+")[0], "compile" in variant)
                    times.setdefault(f"seqmodel {variant}", []).extend(ms)
                    losses.setdefault(f"seqmodel {variant}", []).append(val)
            tokens = shape["batch"] * shape["context"]
            rows = {k: {"median_ms": statistics.median(v), "tokens_per_s": 1000 * tokens / statistics.median(v),
                        "train_loss_last": statistics.median(losses[k])} for k, v in times.items()}
            results["shapes"][name] = {"shape": shape, "rows": rows}
            base = rows.get("nanoGPT fp32")
            print(f"\n### {name}: {shape['layers']} layers, {shape['heads']} heads, {shape['d_model']} wide, "
                  f"context {shape['context']}, batch {shape['batch']}, {shape['iters']} iters x {args.rounds} rounds\n")
            print(f"| run | median ms/iter | tokens/s | vs nanoGPT | train loss, last {LAST} iters |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for k, r in rows.items():
                ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
                loss = f"{r['train_loss_last']:.4f}"
                print(f"| {k} | {r['median_ms']:.1f} | {r['tokens_per_s']:,.0f} | {ratio} | {loss} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
