"""Fuzz the whole command line and print how each case ended (tests/fuzzing.py).

    python benchmarks/fuzz_report.py [--recipes N] [--run-dirs N] [--predict N] [--flags N]
                                     [--hf-dirs N] [--export-targets N] [--data N] [--runs-folders N]
                                     [--stores N] [--seed S] [--json OUT]

Trains a tiny character LM and a tiny digit classifier in a temporary folder, then runs the cases
in this process, each with a time limit: mutated recipes (`check`, and `run` for the first ones),
copies of the trained run with one file damaged (`run --resume`, `eval`, `sample`, `score`,
`tokenize`), files handed to `predict`, random command lines, damaged GPT-2 directories for
`init_from = "hf:DIR"` (`check`, `run`), `export --out` targets, user data files (CSV / JSON
tables, image folders, audio folders, gymnasium episode files, each with one thing wrong, through
`check` or a two-step `run`), run folders handed to `seqmodel runs`, and damaged prepared stores
(`prepare`, `run`, `eval`; a count of 0 leaves a family out). Prints a table of outcomes per
family (exit 0 / exit 2 with one line / other exit / traceback / hang / silently wrong: an exit 0
that left a damaged store trusted) and every case that ended otherwise than the first two.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import fuzzing  # noqa: E402
from conftest import make_text, tiny_char_recipe  # noqa: E402
from inprocess import seqmodel  # noqa: E402

DIGITS = ('[model]\narch = "encoder"\nlayers = 1\nd_model = 16\nheads = 2\nmask = "full"\ncontext = 16\n'
          '[train]\nsteps = 2\nbatch_size = 8\neval_every = 2\neval_batches = 1\nthreads = 1\n'
          '[data]\nsource = "digits"\n[tokenizer]\nkind = "patches"\nfield = "image"\nmodality = "image"\n'
          '[task]\nkind = "classify"\n')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", type=int, default=300)
    ap.add_argument("--recipe-runs", type=int, default=40, help="of the recipes, how many also `run`")
    ap.add_argument("--run-dirs", type=int, default=400)
    ap.add_argument("--predict", type=int, default=100)
    ap.add_argument("--flags", type=int, default=600)
    ap.add_argument("--hf-dirs", type=int, default=150, help="damaged GPT-2 directories (check, run)")
    ap.add_argument("--export-targets", type=int, default=120, help="export --out targets")
    ap.add_argument("--data", type=int, default=60, help="cases of each family of user data files")
    ap.add_argument("--runs-folders", type=int, default=150, help="run folders handed to `seqmodel runs`")
    ap.add_argument("--stores", type=int, default=120, help="damaged prepared stores (prepare, run, eval)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60, help="seconds before a case counts as a hang")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="seqmodel-fuzz-") as tmp:
        tmp = Path(tmp)
        os.chdir(tmp)  # runs without --out land in tmp/runs
        corpus = tmp / "corpus.txt"
        corpus.write_text(make_text(1500))
        recipe = tiny_char_recipe(tmp, corpus, steps=4, checkpoint_every=2, eval_every=2)
        with fuzzing.stores_at(tmp / "stores"):
            seqmodel("run", recipe, "--out", tmp / "run", "--no-progress")
        (tmp / "digits.toml").write_text(DIGITS)
        seqmodel("run", tmp / "digits.toml", "--out", tmp / "digits_run", "--no-progress")
        bad = tmp / "bad.toml"
        bad.write_text("[train]\nstepz = 1\n")
        rng = random.Random(args.seed)
        families = [
            fuzzing.recipe_cases(rng, tomllib.loads(recipe.read_text()), tmp, args.recipes, args.recipe_runs),
            fuzzing.rundir_cases(rng, tmp / "run", recipe, tmp, args.run_dirs),
            fuzzing.predict_cases(rng, tmp / "digits_run", tmp / "inputs", args.predict),
            fuzzing.flag_cases(rng, tmp / "run", recipe, bad, tmp, args.flags),
            fuzzing.table_cases(rng, tmp, args.data),
            fuzzing.image_cases(rng, tmp, args.data),
            fuzzing.audio_cases(rng, tmp, args.data),
            fuzzing.episode_cases(rng, tmp, args.data),
            fuzzing.runs_cases(rng, tmp / "run", tmp, args.runs_folders),
            fuzzing.store_cases(rng, tmp / "stores", tmp / "run", recipe, tmp, args.stores),
        ]
        families += interop_families(args, rng, tmp, corpus)
        t0 = time.perf_counter()
        results = [fuzzing.run_case(case, args.timeout) for cases in families for case in cases]
        seconds = time.perf_counter() - t0
    print(fuzzing.table(results))
    print(f"\n{len(results)} cases in {seconds:.0f} s (seed {args.seed}; one process, machine shared with other work)")
    ran = sum(r.case.name.startswith("run ") for r in results if r.case.family == "recipes")
    print(f"recipes `check` accepted and `run` refused: {len(fuzzing.check_passes_run_fails(results))} (of {ran} runs)")
    gaps = [r for r in results if r.case.gap]
    print(f"of which {len(gaps)} read by the saved-recipe loader or a plugin (fuzzing.state_read_by_plugins): " + ", ".join(
        f"{n} {o}" for o in fuzzing.OUTCOMES if (n := sum(r.outcome == o for r in gaps))))
    for r in results:
        if r.outcome not in fuzzing.GOOD:
            print(f"\n[{r.case.family}]{' (plugin-read state)' * r.case.gap} {r.case.name}: {r.outcome}\n{r.detail}")
    if args.json:
        Path(args.json).write_text(json.dumps([{"family": r.case.family, "case": r.case.name, "outcome": r.outcome,
                                                "detail": r.detail} for r in results], indent=1))


def interop_families(args, rng: random.Random, tmp: Path, corpus: Path) -> list:
    """Damaged GPT-2 directories (built here) and export targets (of the trained tmp/run)."""
    families = []
    if args.hf_dirs:
        gpt2 = fuzzing.tiny_gpt2(tmp / "gpt2", corpus.read_text())
        families.append(fuzzing.hf_dir_cases(rng, gpt2, corpus, tmp, args.hf_dirs))
    if args.export_targets:
        families.append(fuzzing.export_cases(rng, tmp / "run", tmp, args.export_targets))
    return families


if __name__ == "__main__":
    main()
