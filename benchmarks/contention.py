"""Two trainings sharing a CPU: the same small recipe alone and beside a second identical run,
with OpenMP threads that spin while they wait (the old behaviour, `SEQMODEL_THREAD_WAIT=spin`)
and with threads that wait passively (seqmodel's default, `seqmodel/_threads.py`); medians side
by side.

    python benchmarks/contention.py                       # caption_digits, 300 steps, 3 repeats
    python benchmarks/contention.py --recipe char_lm_baby --steps 400 --repeats 5 --json out.json

The time of a run is its training loop (steps and the final evaluation: `elapsed_s` of the last
line of metrics.jsonl); process start-up and data preparation are left out (the data is prepared
once before). "Beside another" starts two identical runs together and counts both. Repeats
interleave the modes, so a drift in the machine's speed reaches them alike.

The numbers mean nothing while other work loads the machine: check `uptime` first (load average
below 0.5); the load is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {"spin": {"SEQMODEL_THREAD_WAIT": "spin"}, "passive": {}}
LABELS = {"spin": "spinning threads (SEQMODEL_THREAD_WAIT=spin, before)", "passive": "passive waiting (default, after)"}


def cpu_name() -> str:
    """The CPU's model name (what `lscpu | grep 'Model name'` shows)."""
    try:
        done = subprocess.run(["lscpu"], capture_output=True, text=True, check=True)
        for line in done.stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def environment(mode: str) -> dict:
    """This process's environment without OpenMP wait settings, then the mode's: "spin",
    "passive", or an OpenMP setting of one's own such as ``GOMP_SPINCOUNT=10000``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SEQMODEL_THREAD_WAIT")}
    own = dict([mode.split("=", 1)]) if "=" in mode else MODES[mode]
    return env | own | {"PYTHONUNBUFFERED": "1"}


def command(args, out: Path) -> list[str]:
    sets = [f"train.steps={args.steps}", f"train.eval_every={args.steps}", "train.eval_batches=2",
            f"train.log_every={args.steps}", f"train.checkpoint_every={args.steps}", "sample.num_samples=0",
            *([f"train.threads={args.threads}"] if args.threads else []), *args.set]
    return [sys.executable, "-m", "seqmodel", "run", args.recipe, "--out", str(out), "--no-progress",
            *[a for s in sets for a in ("--set", s)]]


def train_seconds(run: Path) -> float:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return float(json.loads(lines[-1])["elapsed_s"])


def runs(args, mode: str, together: int, root: Path) -> list[float]:
    """Start `together` identical runs at once; the training seconds of each."""
    outs = [root / f"{mode}-{together}-{i}-{time.monotonic_ns()}" for i in range(together)]
    procs = [subprocess.Popen(command(args, out), env=environment(mode), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for out in outs]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a run failed ({proc.returncode}):\n{err[-2000:]}")
    return [train_seconds(out) for out in outs]


def table(result: dict) -> str:
    rows = [f"{'':<52} {'alone s':>9} {'beside another s':>17} {'ratio':>6}"]
    for mode, r in result["modes"].items():
        rows.append(f"{LABELS.get(mode, mode):<52} {r['alone_median_s']:>9.1f} {r['beside_median_s']:>17.1f} {r['ratio']:>6.2f}")
    return "\n".join(rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="caption_digits", help="a recipe file or shipped recipe name")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="[train] threads (0: torch's default, all cores)")
    ap.add_argument("--modes", default="spin,passive",
                    help="comma-separated: spin, passive, or OpenMP settings such as GOMP_SPINCOUNT=10000")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more recipe overrides")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    load_before = os.getloadavg()
    subprocess.run([sys.executable, "-m", "seqmodel", "prepare", args.recipe], env=environment("passive"),
                   check=True, capture_output=True)
    times: dict[str, dict[str, list[float]]] = {m: {"alone": [], "beside": []} for m in modes}
    with tempfile.TemporaryDirectory(prefix="seqmodel-contention-") as tmp:
        for _ in range(args.repeats):
            for mode in modes:
                for together, kind in ((1, "alone"), (2, "beside")):
                    load = os.getloadavg()[0]
                    times[mode][kind] += runs(args, mode, together, Path(tmp))
                    print(f"{mode} {kind}: {times[mode][kind][-together:]} s (load average at its start {load:.2f})",
                          file=sys.stderr, flush=True)
    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
              "recipe": args.recipe, "steps": args.steps, "threads": args.threads or "default",
              "repeats": args.repeats, "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()], "modes": {}}
    for mode in modes:
        alone, beside = statistics.median(times[mode]["alone"]), statistics.median(times[mode]["beside"])
        result["modes"][mode] = {"alone_s": times[mode]["alone"], "beside_s": times[mode]["beside"],
                                 "alone_median_s": alone, "beside_median_s": beside, "ratio": round(beside / alone, 2)}
    print(f"{result['cpu']}, {result['cores']} cores; {args.recipe}, {args.steps} steps, median of {args.repeats} "
          f"(load average before {load_before[0]:.2f}, after {result['load_after'][0]:.2f})")
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
