"""Ablation of the `[model]` architecture options on the char_lm recipes.

Trains `recipes/char_lm_baby.toml` (`--shape baby`) or `recipes/char_lm.toml` (`--shape default`)
with each option alone and then with the best combination, over several seeds, through the
in-process API, and reports per option: validation loss at equal steps (the end of the run), at
equal wall time (interpolated in metrics.jsonl's elapsed_s at the end time of the fastest run) and
at equal time paced by a side-by-side speed measurement, each with its difference from the
baseline paired by seed; the median step time, training tokens/s, parameters and the KV cache of
one sequence at full context (fp32, measured from a `DecodeCache`).

On a shared machine a run's elapsed time mostly measures its neighbours (the same baseline run
took 575 s and 843 s of a 2-minute idle time on one day), so the speed phase runs every option for
`--speed-steps` steps, round-robin, `--speed-rounds` times, and takes each option's median
10-step window: options are timed side by side under the same load. The validation curve of each
training run is then placed on that time axis (step x median seconds per step).

The best combination takes, from each group of alternatives (the MLP, the K/V heads), the option
with the lowest mean loss at equal steps (`--criterion time`: at equal wall time, `speed`: at
equal paced time) when it beats the baseline's; `--best a,b` names it instead. Seeds are the
outer loop of training, so contention spreads over all options alike. `--from-json` re-reads the
training runs of an earlier result (and re-measures speed); `--resume` continues an interrupted
ablation from the runs its `--json` file holds.

    python benchmarks/ablate.py --shape baby --seeds 3 --json benchmarks/results/ablate_baby.json
    python benchmarks/ablate.py --shape default --seeds 1 --steps 300 --options baseline,swiglu
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"baby": REPO / "recipes" / "char_lm_baby.toml", "default": REPO / "recipes" / "char_lm.toml"}

# name -> (group of alternatives, overrides); {heads} is the recipe's head count
OPTIONS = {
    "baseline": ("", []),
    "rmsnorm": ("norm", ["model.norm=rmsnorm"]),
    "swiglu": ("mlp", ["model.mlp=swiglu"]),
    "relu2": ("mlp", ["model.mlp=relu2"]),
    "gelu_tanh": ("mlp", ["model.mlp=gelu_tanh"]),
    "qk_norm": ("qk_norm", ["model.qk_norm=true"]),
    "gqa": ("kv_heads", ["model.kv_heads={half_heads}"]),
    "mqa": ("kv_heads", ["model.kv_heads=1"]),
    "embed_norm": ("embed_norm", ["model.embed_norm=true"]),
}
DEFAULT_OPTIONS = "baseline,rmsnorm,swiglu,relu2,qk_norm,gqa,mqa"


def kv_cache_bytes(core) -> int:
    """Bytes of the KV cache of one sequence at the model's full context."""
    from seqmodel.model.transformer import DecodeCache
    from seqmodel.segments import Segment, collate

    name = next(n for n, s in core.specs.items() if s.discrete)
    cache = DecodeCache(core.cfg.context)
    with torch.no_grad():
        core.eval().decode(collate([[Segment(name, ids=torch.tensor([0]))]]), None, cache)
    return cache.nbytes()


def train_one(recipe: Path, overrides: list[str], out: Path) -> dict:
    """One run; its validation curve (elapsed_s, step, val_loss), median seconds per step over its
    logging windows, tokens/s, parameters and cache size."""
    import seqmodel

    start = time.perf_counter()
    run = seqmodel.run(str(recipe), overrides, out=str(out), progress=False)
    wall = time.perf_counter() - start
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["elapsed_s"], r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    windows = [(b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"]) for a, b in zip(history, history[1:])]
    core = run.pipeline.module.core
    return {"overrides": overrides, "evals": evals, "val_loss": evals[-1][2], "steps": evals[-1][1],
            "s_per_step": statistics.median(windows) if windows else history[-1]["elapsed_s"] / history[-1]["step"],
            "train_s": history[-1]["elapsed_s"], "wall_s": round(wall, 1),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in history if "tokens_per_s" in r),
            "params": core.num_parameters(), "kv_cache_bytes": kv_cache_bytes(core)}


def measure_speed(recipe: Path, options: dict[str, list[str]], rounds: int, steps: int, common: list[str],
                  tmp: Path) -> dict[str, list[float]]:
    """Seconds per step of each option: `rounds` round-robin runs of `steps` steps each."""
    speed: dict[str, list[float]] = {}
    short = [*common, f"train.steps={steps}", f"train.eval_every={steps}", "train.eval_batches=1", "train.log_every=10"]
    for i in range(rounds):
        for name, overrides in options.items():
            r = train_one(recipe, [*short, *overrides], tmp / f"speed-{i}-{name.replace(' ', '_').replace(':', '')}")
            speed.setdefault(name, []).append(r["s_per_step"])
        print(f"  speed round {i + 1}: " + ", ".join(f"{n} {1000 * v[-1]:.1f} ms" for n, v in speed.items()),
              file=sys.stderr, flush=True)
    return speed


def loss_at(evals: list[tuple[float, int, float]], t: float) -> float:
    """Validation loss at elapsed time t, linear between evaluations."""
    for (t0, _, a), (t1, _, b) in zip(evals, evals[1:]):
        if t0 <= t <= t1:
            return a + (b - a) * (t - t0) / max(t1 - t0, 1e-9)
    return evals[-1][2] if t >= evals[-1][0] else evals[0][2]


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def paced(run: dict, s_per_step: float) -> list[tuple[float, int, float]]:
    """The validation curve on a time axis of step x `s_per_step`."""
    return [(step * s_per_step, step, loss) for _, step, loss in run["evals"]]


def summarise(runs: dict[str, list[dict]], speed: dict[str, list[float]] | None = None) -> dict[str, dict]:
    """Per option: means over seeds, and differences from the baseline paired by seed. Without a
    side-by-side `speed`, each run is paced by its own median step time."""
    pace = {name: [statistics.median(speed[name]) if speed else r["s_per_step"] for r in rs] for name, rs in runs.items()}
    budget = min(r["train_s"] for rs in runs.values() for r in rs)
    paced_budget = min(r["steps"] * p for name, rs in runs.items() for r, p in zip(rs, pace[name]))
    curves = {name: [[r["val_loss"] for r in rs], [loss_at(r["evals"], budget) for r in rs],
                     [loss_at(paced(r, p), paced_budget) for r, p in zip(rs, pace[name])]] for name, rs in runs.items()}
    rows = {}
    for name, rs in runs.items():
        steps, timed, at_pace = curves[name]
        row = {"val_loss": mean_sd(steps), "val_loss_at_time": mean_sd(timed), "time_budget_s": budget,
               "val_loss_at_paced_time": mean_sd(at_pace), "paced_budget_s": paced_budget,
               "ms_per_step": 1000 * statistics.median(pace[name]), "paced_by": "side-by-side" if speed else "own run",
               "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
               "train_s": statistics.median(r["train_s"] for r in rs),
               "params": rs[0]["params"], "kv_cache_bytes": rs[0]["kv_cache_bytes"], "seeds": len(rs)}
        if "baseline" in runs and name != "baseline":
            n = min(len(rs), len(runs["baseline"]))
            for key, mine, base in zip(("delta", "delta_at_time", "delta_at_paced_time"), curves[name], curves["baseline"]):
                row[key] = mean_sd([mine[i] - base[i] for i in range(n)])
        rows[name] = row
    return rows


def choose_best(rows: dict[str, dict], criterion: str) -> list[str]:
    """From each group of alternatives, the option that beats the baseline by the most."""
    key = {"steps": "delta", "time": "delta_at_time", "speed": "delta_at_paced_time"}[criterion]
    best: dict[str, tuple[float, str]] = {}
    for name, row in rows.items():
        group = OPTIONS.get(name, ("", []))[0]
        if group and key in row and row[key][0] < 0 and row[key][0] < best.get(group, (0.0, ""))[0]:
            best[group] = (row[key][0], name)
    return sorted(name for _, name in best.values())


def fmt(value: tuple[float, float] | None, signed: bool = False) -> str:
    return "-" if value is None else f"{value[0]:{'+' if signed else ''}.4f} ± {value[1]:.4f}"


def table(rows: dict[str, dict], overrides: dict[str, list[str]]) -> str:
    first = next(iter(rows.values()))
    lines = ["| option | overrides | params | KV cache / seq | val loss, equal steps | vs baseline | "
             f"at {first['time_budget_s']:.0f} s elapsed | vs baseline | at {first['paced_budget_s']:.0f} s paced | "
             f"vs baseline | ms/step ({first['paced_by']}) | tokens/s (own run) | train s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {' '.join(o.removeprefix('model.') for o in overrides[name]) or '-'} | {r['params'] / 1e6:.3f} M | "
            f"{r['kv_cache_bytes'] / 1024:.0f} KiB | {fmt(r['val_loss'])} | {fmt(r.get('delta'), True)} | "
            f"{fmt(r['val_loss_at_time'])} | {fmt(r.get('delta_at_time'), True)} | {fmt(r['val_loss_at_paced_time'])} | "
            f"{fmt(r.get('delta_at_paced_time'), True)} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def resolve(names: list[str], heads: int) -> dict[str, list[str]]:
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise SystemExit(f"error: unknown option {unknown[0]!r} (known: {', '.join(OPTIONS)})")
    return {n: [o.format(half_heads=max(1, heads // 2)) for o in OPTIONS[n][1]] for n in names}


def run_all(recipe: Path, options: dict[str, list[str]], seeds: list[int], common: list[str], tmp: Path,
            runs: dict[str, list[dict]], save) -> None:
    """Train each (seed, option) not in `runs` yet (runs[name] stay in seed order); `save()` after each."""
    for seed in seeds:
        for name, overrides in options.items():
            full = [*common, f"train.seed={seed}", *overrides]
            if any(r["overrides"] == full for r in runs.get(name, [])):
                continue
            r = train_one(recipe, full, tmp / f"{name}-{seed}")
            runs.setdefault(name, []).append(r)
            save()
            print(f"  {name} seed {seed}: val {r['val_loss']:.4f} at step {r['steps']}, {r['train_s']:.0f} s, "
                  f"{r['tokens_per_s']:,.0f} tok/s", file=sys.stderr, flush=True)


def train_all(args, recipe: Path, options: dict[str, list[str]], common: list[str], tmp: Path, heads: int) -> dict[str, list[dict]]:
    """Each option over the seeds, then the best combination (added to `options`). With `--resume`
    the runs already in `--json` are kept; the file is rewritten after every run."""
    seeds = list(range(args.seeds))
    runs: dict[str, list[dict]] = {}
    if args.resume and args.json and args.json.is_file():
        runs = json.loads(args.json.read_text())["runs"]

    def save():
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"partial": True, "common": common, "runs": runs}, indent=1))

    run_all(recipe, options, seeds, common, tmp, runs, save)
    best = args.best.split(",") if args.best is not None else choose_best(summarise(runs), args.criterion)
    best = [b for b in best if b]
    if len(best) > 1:
        combo = resolve(best, heads)
        name = "best: " + "+".join(best)
        options[name] = [o for b in best for o in combo[b]]
        run_all(recipe, {name: options[name]}, seeds, common, tmp, runs, save)
    return runs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="baby", choices=list(SHAPES))
    ap.add_argument("--recipe", type=Path, help="another recipe instead of the shape's")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    ap.add_argument("--steps", type=int, help="override the recipe's train.steps (the schedule follows)")
    ap.add_argument("--eval-every", type=int, help="override the recipe's train.eval_every")
    ap.add_argument("--threads", type=int, help="train.threads (1 is far faster than 2 on a 2-core machine others also use)")
    ap.add_argument("--options", default=DEFAULT_OPTIONS, help=f"comma-separated, of: {', '.join(OPTIONS)}")
    ap.add_argument("--best", help="the combination to run, comma-separated ('' skips it; default: chosen)")
    ap.add_argument("--criterion", default="steps", choices=["steps", "time", "speed"], help="how the best combination is chosen")
    ap.add_argument("--speed-rounds", type=int, default=3, help="side-by-side speed rounds (0: pace each run by itself)")
    ap.add_argument("--speed-steps", type=int, default=60)
    ap.add_argument("--from-json", type=Path, help="take the training runs from an earlier result")
    ap.add_argument("--json", type=Path, help="write the result here (and the runs so far after each run)")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --json")
    args = ap.parse_args(argv)

    from seqmodel.recipe.schema import load_recipe

    recipe = (args.recipe or SHAPES[args.shape]).resolve()
    common = ["sample.num_samples=0", "train.checkpoint_every=1000000"]
    for key, value in (("steps", args.steps), ("eval_every", args.eval_every), ("threads", args.threads)):
        common += [f"train.{key}={value}"] * (value is not None)
    names = [n for n in args.options.split(",") if n]
    heads = load_recipe(recipe).model.heads
    options = resolve(["baseline", *[n for n in names if n != "baseline"]], heads)
    started = time.strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory() as tmp:
        if args.from_json:
            earlier = json.loads(args.from_json.read_text())
            runs, common = earlier["runs"], earlier["common"]
            options = {name: [o for o in rs[0]["overrides"][len(common) + 1 :]] for name, rs in runs.items()}
        else:
            runs = train_all(args, recipe, options, common, Path(tmp), heads)
        speed = measure_speed(recipe, options, args.speed_rounds, args.speed_steps, common, Path(tmp)) if args.speed_rounds else None
    rows = summarise(runs, speed)
    seeds = sorted({int(o.split("=")[1]) for rs in runs.values() for r in rs for o in r["overrides"] if o.startswith("train.seed=")})
    print(f"\n{recipe.name}, seeds {seeds}, common overrides {' '.join(common)}; started {started}, "
          f"{platform.processor() or platform.machine()}\n")
    print(table(rows, options))
    result = {"recipe": str(recipe), "seeds": seeds, "common": common, "started": started, "argv": sys.argv[1:],
              "torch": torch.__version__, "rows": rows, "speed": speed, "runs": runs}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
