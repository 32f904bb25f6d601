"""One model on many tasks against each task trained alone (issue 30's table).

Trains a mixture recipe (default recipes/generalist.toml), then each of its members alone: a
one-member mixture with the same [model] shape and [train] settings and seed, for as many
optimizer steps as that member had micro-batches in the mixture (the draws are a pure function
of the seed, so they are counted without training). Then evaluates both models of every member
the same way on its held-out data and prints one row per member: the metric of the mixture's
model next to the single model's, with parameters and wall time.

    python benchmarks/generalist.py [--recipe recipes/generalist.toml] [--out DIR] [--set KEY=VALUE]... [--json out.json]

A finished run in --out is reused (delete it to train again). Name the CPU with the figures
(`lscpu | grep 'Model name'`); wall times are only comparable when nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

EVALUATIONS = {
    "lm": [("val", {}, ("bits_per_char",))],
    "classify": [("test", {}, ("accuracy",))],
    "seq2seq": [("test", {}, ("exact_match", "cer"))],
    "decision": [("test", {"target_return": t, "episodes": 10}, ("mean_return",)) for t in (100.0, 300.0, 500.0)],
}
"""task -> (split, evaluation options, metrics reported) per evaluation of a member."""


def member_steps(recipe, steps: int) -> dict[str, int]:
    """How many micro-batches each member gets in `steps` optimizer steps of the mixture."""
    from seqmodel.data.mixture import MemberDraws

    names = list(recipe.members)
    draws = MemberDraws([recipe.members[n].weight for n in names], recipe.train.seed, recipe.train.grad_accum)
    counts = dict.fromkeys(names, 0)
    for step in range(steps):
        for micro in range(recipe.train.grad_accum):
            counts[names[draws(step, micro)[0]]] += 1
    return {n: -(-c // recipe.train.grad_accum) for n, c in counts.items()}


def train(recipe: Path, out: Path, overrides: list[str]) -> float:
    """Train (in a process of its own, as a user would) unless `out` holds a finished run; wall seconds."""
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and (out / "loss.png").is_file():
        return json.loads(metrics.read_text().splitlines()[-1]).get("elapsed_s", float("nan"))
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "seqmodel", "run", str(recipe), "--out", str(out), "--no-progress"]
    subprocess.run([*cmd, *[f"--set={o}" for o in overrides]], check=True)
    return time.perf_counter() - start


def evaluate(run: Path, member: str | None, task: str) -> dict[str, float]:
    import seqmodel

    out = {}
    for split, options, keys in EVALUATIONS.get(task, []):
        got = seqmodel.load(run, member=member).evaluate(split, **options)
        suffix = f"@{options['target_return']:g}" if "target_return" in options else ""
        out |= {f"{k}{suffix}": float(got[k]) for k in keys}
        out |= {k: float(v) for k, v in got.items() if k.startswith(tuple(f"{k}[" for k in keys))}  # per length
    return out


def alone(mixture: Path, member: str, steps: int, folder: Path) -> Path:
    """A one-member mixture: the member with the mixture's [model] and [train], `steps` steps."""
    import tomllib

    raw = tomllib.loads(mixture.read_text())
    keep = {k: v for k, v in raw.items() if k in ("model", "train")}
    keep["mixture"] = {member: raw["mixture"][member]}
    keep["train"] = dict(keep.get("train", {}), steps=steps)
    path = folder / f"alone_{member}.toml"
    path.write_text(toml(keep))
    return path


def toml(tables: dict, prefix: str = "") -> str:
    """Plain nested tables as TOML (enough for recipes)."""
    scalars = {k: v for k, v in tables.items() if not isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{k} = {json.dumps(v)}" for k, v in scalars.items()]
    for k, v in tables.items():
        if isinstance(v, dict):
            lines.append(toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(lines) + "\n"


def parameters(run: Path) -> int:
    import seqmodel

    return sum(p.numel() for p in seqmodel.load(run).pipeline.module.parameters())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "generalist.toml")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "generalist_bench")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="applied to the mixture and to every member alone (e.g. train.steps=600)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from seqmodel.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    together = args.out / "mixture"
    wall = {"mixture": train(args.recipe, together, args.overrides)}
    steps = member_steps(recipe, recipe.train.steps)
    rows = []
    for name, member in recipe.members.items():
        task = member.recipe.task.name
        single = args.out / f"alone_{name}"
        wall[name] = train(alone(args.recipe, name, steps[name], args.out), single, args.overrides)
        rows.append({"member": name, "task": task, "steps": steps[name], "mixture": evaluate(together, name, task),
                     "alone": evaluate(single, name, task), "alone_parameters": parameters(single),
                     "alone_wall_s": round(wall[name], 1)})
        print(f"{name}: {json.dumps(rows[-1])}", flush=True)
    result = {"recipe": str(args.recipe), "overrides": args.overrides, "steps": recipe.train.steps,
              "mixture_parameters": parameters(together), "mixture_wall_s": round(wall["mixture"], 1),
              "alone_parameters_total": sum(r["alone_parameters"] for r in rows),
              "alone_wall_s_total": round(sum(r["alone_wall_s"] for r in rows), 1), "members": rows,
              "cpu": cpu_name(), "python": platform.python_version()}
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(result: dict) -> str:
    lines = ["| member | task | its steps | metric | one model (mixture) | alone |", "| --- | --- | --- | --- | --- | --- |"]
    for r in result["members"]:
        for key, value in r["mixture"].items():
            lines.append(f"| {r['member']} | {r['task']} | {r['steps']:,} | {key} | {value:.4f} | {r['alone'][key]:.4f} |")
    lines.append(f"| parameters | | | | {result['mixture_parameters']:,} | {result['alone_parameters_total']:,} (sum) |")
    lines.append(f"| wall time | | | | {result['mixture_wall_s']:.0f} s | {result['alone_wall_s_total']:.0f} s (sum) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
