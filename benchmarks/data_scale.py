"""Data at scale: preparation speed, start-up time and memory as the corpus grows.

For generated text corpora (seeded; default 5 MB, 50 MB, 500 MB and 2 GB) and a folder of
generated images (default 20,000), each in a fresh prepared-data folder:

1. `seqmodel prepare RECIPE` (a process of its own): wall time and MB/s of corpus, and the
   tokenization rate the preparation reports for the training split;
2. `seqmodel run RECIPE` 1 + `--repeats` times at the baby shape (4 layers x 128, context 64,
   batch 12): the first run finds the stores `prepare` wrote; the others (medians) are timed
   from process start to their first training step (the first line of metrics.jsonl,
   `log_every = 1`) and to the start of that step (inside the process: what the data costs,
   without the step's own compute); peak RSS is the largest ru_maxrss of those processes, and
   the batch path's share of the step is the time spent drawing training batches over the time
   of the training steps, measured inside the process.

    python benchmarks/data_scale.py                           # every size, JSON to benchmarks/results/data_scale.json
    python benchmarks/data_scale.py --sizes 5,50 --images 0 --tokenizer bpe
    python benchmarks/data_scale.py --profile 50              # where the time of preparing 50 MB goes

The generated corpora are deleted at the end (--keep keeps them). Check `df -h` first: the 2 GB
corpus and its stores take about 6 GB.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the king queen lord doth thou art not my good sir shall be to and of what love death night day sweet fair "
         "heart hath speak come go well now ROMEO JULIET KING: Enter Exeunt. What, say! O, my lord? Ay; yes").split()


# -- generated data ----------------------------------------------------------------------------
def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """Seeded word text of about `megabytes` MB, in lines of 3-12 words; returns its size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array([w.encode() for w in WORDS] + [b"\n"] * 4, dtype=object)
    target, written = int(megabytes * 1e6), 0
    with open(path, "wb") as f:
        while written < target:
            idx = rng.integers(0, len(words), 1 << 20)
            chunk = b" ".join(words[idx]).replace(b" \n ", b"\n")[: target - written]
            f.write(chunk)
            written += len(chunk)
        f.write(b"\n")
    return written + 1


def write_images(folder: Path, n: int, seed: int = 0) -> int:
    """`n` seeded 16x16 RGB PNGs in 10 class folders (a bright square whose place is the class)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = 0
    for k in range(n):
        label = k % 10
        pixels = rng.integers(0, 80, (16, 16, 3), dtype=np.uint8)
        r, c = divmod(label, 4)
        pixels[r * 4 : r * 4 + 6, c * 4 : c * 4 + 6] += 150
        path = folder / f"class{label}" / f"{k:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        total += path.stat().st_size
    return total


def text_recipe(path: Path, corpus: Path, tokenizer: str, steps: int) -> Path:
    tok = 'kind = "bpe"\nvocab_size = 1000\nfit_max_chars = 20000000' if tokenizer == "bpe" else 'kind = "char"'
    path.write_text(f"""# seqmodel run {path}
[model]
layers = 4
d_model = 128
heads = 4
context = 64
dropout = 0.0
[train]
steps = {steps}
batch_size = 12
warmup = 5
log_every = 1
eval_every = {steps}
eval_batches = 2
checkpoint_every = {steps}
[data]
source = "text"
paths = ["{corpus}"]
[tokenizer]
{tok}
[task]
kind = "lm"
[sample]
num_samples = 0
""")
    return path


def image_recipe(path: Path, folder: Path, steps: int) -> Path:
    path.write_text(f"""# seqmodel run {path}
[model]
arch = "encoder"
layers = 4
d_model = 128
heads = 4
context = 16
mask = "full"
[train]
steps = {steps}
batch_size = 12
warmup = 5
log_every = 1
eval_every = {steps}
eval_batches = 2
checkpoint_every = {steps}
[data]
source = "imagefolder"
path = "{folder}"
[tokenizer]
kind = "patches"
field = "image"
modality = "image"
size = 16
patch = 4
[task]
kind = "classify"
report_images = 0
""")
    return path


# -- measurements ------------------------------------------------------------------------------
def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def seqmodel(*args: str, env: dict) -> tuple[float, float, str]:
    """Wall and CPU seconds (the process and its children) of a `seqmodel` command, its stderr."""
    t0, c0 = time.perf_counter(), children_cpu()
    done = subprocess.run([sys.executable, "-m", "seqmodel", *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"seqmodel {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0, children_cpu() - c0, done.stderr


def timed_run(recipe: Path, out: Path, env: dict) -> dict:
    """A `seqmodel run` in a child process that times the batch path: seconds to the first
    step, peak RSS, and the batch path's share of the training steps."""
    timings = out.with_suffix(".timings.json")
    cmd = [sys.executable, __file__, "--child-run", str(recipe), str(out), str(timings), repr(time.time())]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    first = None
    metrics = out / "metrics.jsonl"
    while proc.poll() is None:
        if first is None and metrics.is_file() and metrics.stat().st_size:
            first = time.perf_counter() - t0
        time.sleep(0.02)
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"seqmodel run {recipe} failed:\n{err[-3000:]}")
    record = json.loads(timings.read_text())
    return {"first_step_s": round(first, 2) if first is not None else None, "to_loop_s": record["to_loop_s"],
            "peak_rss_mb": round(record["peak_rss_kb"] / 1024, 1), "batch_share": record["batch_share"],
            "step_ms": record["step_ms"], "batch_ms": record["batch_ms"]}


def child_run(recipe: str, out: str, timings: str, started: str) -> None:
    """`seqmodel run RECIPE --out OUT`, with the time of each batch draw and training step kept,
    and the time from `started` (when the parent launched this process) to the first step's start."""
    import resource

    from seqmodel import cli, task
    from seqmodel.training import train

    spent = {"batch": 0.0, "step": 0.0, "steps": 0, "in_step": False, "to_loop": None}

    def timing(method, key):
        def timed(*args, **kwargs):
            if spent["to_loop"] is None and key == "step":
                spent["to_loop"] = time.time() - float(started)
            t0 = time.perf_counter()
            spent["in_step"] |= key == "step"
            try:
                return method(*args, **kwargs)
            finally:
                if key == "step" or spent["in_step"]:  # batches of training steps, not of evaluation
                    spent[key] += time.perf_counter() - t0
                if key == "step":
                    spent["steps"] += 1
                    spent["in_step"] = False

        return timed

    for cls in (task.RandomBatches, task.EpochBatches):
        cls.batch = timing(cls.batch, "batch")
    train.Trainer.train_step = timing(train.Trainer.train_step, "step")
    code = cli.main(["run", recipe, "--out", out, "--no-progress"])
    steps = max(spent["steps"], 1)
    Path(timings).write_text(json.dumps({
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "to_loop_s": round(spent["to_loop"], 2),
        "batch_share": round(spent["batch"] / max(spent["step"], 1e-9), 4),
        "step_ms": round(1000 * spent["step"] / steps, 2), "batch_ms": round(1000 * spent["batch"] / steps, 3)}))
    sys.exit(code)


def tokenize_rate(stderr: str) -> float | None:
    """The MB/s the preparation reported for the training split."""
    found = re.search(r"prepared the train split .*?, ([\d,.]+) MB/s", stderr)
    return float(found.group(1).replace(",", "")) if found else None


def measure(name: str, recipe: Path, nbytes: int, work: Path, base_env: dict, repeats: int) -> dict:
    env = {**base_env, "SEQMODEL_STORES": str(work / f"stores-{name}")}
    prep_s, prep_cpu_s, prep_err = seqmodel("prepare", str(recipe), env=env)
    row = {"data": name, "bytes": nbytes, "prepare_s": round(prep_s, 2), "prepare_mb_s": round(nbytes / prep_s / 1e6, 1),
           "prepare_cpu_s": round(prep_cpu_s, 2), "tokenize_mb_s": tokenize_rate(prep_err)}
    timed_run(recipe, work / f"run-{name}-0", env)  # the first run after `prepare`: warms the file cache
    runs = [timed_run(recipe, work / f"run-{name}-{k + 1}", env) for k in range(repeats)]
    for key in ("first_step_s", "to_loop_s", "batch_share", "step_ms", "batch_ms"):
        row[key] = statistics.median(r[key] for r in runs)
        row[key + "_all"] = [r[key] for r in runs]
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    shutil.rmtree(work / f"stores-{name}", ignore_errors=True)
    for run in work.glob(f"run-{name}-*"):
        shutil.rmtree(run, ignore_errors=True) if run.is_dir() else run.unlink()
    print(json.dumps(row), file=sys.stderr)
    return row


def profile(megabytes: float, tokenizer: str, work: Path) -> None:
    """Prepare a generated corpus in this process under cProfile; print where the time goes."""
    os.environ["SEQMODEL_STORES"] = str(work / "stores-profile")
    corpus = work / f"corpus-{megabytes:g}MB.txt"
    if not corpus.is_file():
        write_corpus(corpus, megabytes)
    recipe = text_recipe(work / f"profile-{tokenizer}.toml", corpus, tokenizer, 10)
    from seqmodel import cli

    cProfile.runctx('cli.main(["prepare", str(recipe)])', globals(), {"cli": cli, "recipe": recipe}, str(work / "prof"))
    pstats.Stats(str(work / "prof")).sort_stats("cumulative").print_stats(25)
    shutil.rmtree(work / "stores-profile", ignore_errors=True)


def bpe_breakdown(megabytes: float, work: Path) -> None:
    """Where byte-level BPE encoding spends its time, side by side on the same parts of the same
    corpus (read as the `text` source reads it) with a tokenizer fitted as the recipe fits it:
    the library's batch encoder alone (the ceiling of any preparer built on it: ids not even read
    back), its GPT-2 regex split alone and a whitespace split alone (a one-entry word table), and
    this project's encoder (`bpe_encode`: the pre-token cache) in this process only and with a
    worker process. Wall MB/s, and MB per CPU second (this process's threads and its children):
    on a shared machine the second is what the code costs, the first what the scheduler gave."""
    import resource

    from seqmodel_plugins.sources.text_files import cut_parts
    from seqmodel_tokenizers.bpe import BPEConfig, BPETokenizer, pieces

    from tokenizers import Tokenizer, models, pre_tokenizers

    corpus = work / f"corpus-{megabytes:g}MB.txt"
    if not corpus.is_file():
        write_corpus(corpus, megabytes)
    text = corpus.read_text()
    bpe = BPETokenizer(BPEConfig(vocab_size=1000), "text")
    bpe.fit([text[:20_000_000]])
    parts = list(cut_parts(text[i : i + (1 << 22)] for i in range(0, len(text), 1 << 22)))
    split = [pieces(part) for part in parts]
    nbytes = len(text.encode())

    def library(tok):
        return lambda: [tok.encode_batch_fast(p, add_special_tokens=False) for p in split]

    def split_only(pre):
        tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre
        return library(tok)

    rows = [("library batch encoder (GPT-2 split + merges), 2 threads: the ceiling", library(bpe.tok)),
            ("library: GPT-2 regex split alone (+ one word lookup)", split_only(pre_tokenizers.ByteLevel(add_prefix_space=False))),
            ("library: whitespace split alone (+ one word lookup)", split_only(pre_tokenizers.WhitespaceSplit())),
            ("bpe_encode (pre-token cache), this process", lambda: list(bpe._encoder.encode_stream(parts, workers=0))),
            ("bpe_encode, this process + 1 worker process", lambda: list(bpe._encoder.encode_stream(parts, workers=1)))]
    print(f"| {megabytes:g} MB of generated text, 2 cores (shared) | wall MB/s | MB per CPU second |\n| --- | ---: | ---: |")
    for name, run in rows:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0, c0 = time.perf_counter(), time.process_time() + children.ru_utime + children.ru_stime
        run()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall, cpu = time.perf_counter() - t0, time.process_time() + children.ru_utime + children.ru_stime - c0
        print(f"| {name} | {nbytes / wall / 1e6:.1f} | {nbytes / cpu / 1e6:.1f} |", flush=True)


def table(rows: list[dict]) -> str:
    head = ("| data | size | prepare | prepare MB/s | prepare CPU | tokenize MB/s | run -> first step (-> its start) | peak RSS "
            "| step | batch path |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines = [head]
    for r in rows:
        cpu = f"{r['prepare_cpu_s']:.1f} s" if r.get("prepare_cpu_s") is not None else "-"
        lines.append(f"| {r['data']} | {r['bytes'] / 1e6:,.0f} MB | {r['prepare_s']:.1f} s | {r['prepare_mb_s']:.1f} | {cpu} | "
                     f"{r['tokenize_mb_s'] if r['tokenize_mb_s'] is not None else '-'} | {r['first_step_s']} s ({r['to_loop_s']} s) | "
                     f"{r['peak_rss_mb']:,.0f} MB | {r['step_ms']:.0f} ms | {100 * r['batch_share']:.2f} % |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5,50,500,2000", help="text corpus sizes in MB, comma-separated")
    ap.add_argument("--images", type=int, default=20000, help="generated images (0: none)")
    ap.add_argument("--tokenizer", choices=["char", "bpe"], default="char")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per corpus (medians; the largest peak RSS)")
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "data_scale_work"))
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "data_scale.json"))
    ap.add_argument("--keep", action="store_true", help="keep the generated corpora")
    ap.add_argument("--profile", type=float, metavar="MB", help="only profile preparing a corpus of this size")
    ap.add_argument("--child-run", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_run:
        return child_run(*args.child_run)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.profile:
        profile(args.profile, args.tokenizer, work)
        if args.tokenizer == "bpe":
            bpe_breakdown(args.profile, work)
        return None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins"), str(REPO / "tokenizers"),
                                                        os.environ.get("PYTHONPATH", "")])}
    rows = []
    try:
        for size in [float(s) for s in args.sizes.split(",") if s]:
            corpus = work / f"corpus-{size:g}MB.txt"
            nbytes = corpus.stat().st_size if corpus.is_file() else write_corpus(corpus, size)
            recipe = text_recipe(work / f"text-{size:g}.toml", corpus, args.tokenizer, args.steps)
            rows.append(measure(f"text {size:g} MB ({args.tokenizer})", recipe, nbytes, work, env, args.repeats))
        if args.images:
            folder = work / f"images-{args.images}"
            nbytes = sum(p.stat().st_size for p in folder.rglob("*.png")) if folder.is_dir() else write_images(folder, args.images)
            recipe = image_recipe(work / "images.toml", folder, args.steps)
            rows.append(measure(f"{args.images:,} images (patches)", recipe, nbytes, work, env, args.repeats))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(), "rows": rows}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
