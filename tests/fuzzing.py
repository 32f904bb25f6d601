"""Fuzz cases for the whole command line, and how each one ended.

Families of bad input, each generated from a seed so that a count is reproducible: recipes
(mutated TOML run through `check`, and `run` where `check` accepts them), damaged run directories
(`run --resume`, `eval`, `sample`, `score`, `tokenize` on a copy of a trained run with one file
damaged), files for `predict`, random command-line flags, damaged HuggingFace GPT-2 directories
(`init_from = "hf:DIR"` through `check` and `run`) and export targets (`export --out`). A case ends as one of
OUTCOMES; only the first two are acceptable. Used by tests/test_fuzz.py and
benchmarks/fuzz_report.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
import signal
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from seqmodel import cli

OUTCOMES = ("exit 0", "exit 2, one line", "other exit", "traceback", "hang", "silently wrong")
GOOD = OUTCOMES[:2]
# Damage read by the saved-recipe loader and by plugins' own state readers (`state_read_by_plugins`)
# once escaped as tracebacks; a test of its own samples those cases.


class Hang(Exception):
    pass


@dataclass
class Case:
    family: str
    name: str
    argv: list[str]
    prepare: Callable[[], None] | None = None  # makes the damaged files, just before the case runs
    gap: bool = False  # damage read by the saved-recipe loader or a plugin (see state_read_by_plugins)
    during: Callable[[], contextlib.AbstractContextManager] | None = None  # holds while the case runs (a full disk)
    check: Callable[[], str | None] | None = None  # after an exit 0: what is wrong with the result, or None


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str


def run_case(case: Case, timeout: float = 60) -> Result:
    """Run one case in this process; a case still running after `timeout` seconds is a hang."""
    if case.prepare is not None:
        case.prepare()
    out, err = io.StringIO(), io.StringIO()

    def alarm(signum, frame):
        raise Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), (case.during or contextlib.nullcontext)():
            try:
                code = cli.main(case.argv)
            except SystemExit as stop:
                code = stop.code
    except Hang:
        return Result(case, "hang", f"still running after {timeout} s")
    except BaseException:  # noqa: BLE001 -- what the fuzzer looks for
        return Result(case, "traceback", traceback.format_exc(limit=-3)[-1500:])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    text = err.getvalue()
    if code == 0:
        wrong = case.check() if case.check is not None else None
        return Result(case, "silently wrong", wrong) if wrong else Result(case, "exit 0", text[-300:])
    lines = [line for line in text.splitlines() if not line.startswith("seqmodel: ") and line.strip()]  # notes
    if code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text:
        return Result(case, "exit 2, one line", lines[0][:300])
    return Result(case, "other exit", f"exit {code}: {text[-1500:]}")


def table(results: list[Result]) -> str:
    """Counts of outcomes per family, as a Markdown table."""
    families = sorted({r.case.family for r in results})
    lines = ["| family | cases | " + " | ".join(OUTCOMES) + " |", "| --- | ---: |" + " ---: |" * len(OUTCOMES)]
    for f in families + ["all"]:
        c = Counter(r.outcome for r in results if f in ("all", r.case.family))
        lines.append(f"| {f} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
    return "\n".join(lines)


# -- recipes -----------------------------------------------------------------------------------

NASTY = [-1, 0, 1, 2, 3, 4, 7, 16, 10**9, 0.1, 1e-3, "decoder", "encoder", "encoder_decoder", "sdpa", "bf16",
         2**63, 2**64, -(2**63) - 1, 0.5, -0.5, 1e308, math.nan, math.inf, -math.inf,
         True, "", "x" * 5000, "ü\u202e", "causal", "full", "(((", "local:-3", "modality:text>nope", "none",
         [], [1, "a"], {}, {"a": {"b": 1}}, "DATE", "DEEP"]
KEYS = {
    "model": ["arch", "layers", "encoder_layers", "d_model", "heads", "mlp_ratio", "dropout", "mask", "layer_masks",
              "encoder_mask", "context", "bias", "tie_embeddings", "modality_embedding", "rope_base", "attention", "nope"],
    "train": ["steps", "batch_size", "grad_accum", "lr", "min_lr", "warmup", "weight_decay", "beta1", "beta2",
              "grad_clip", "eval_every", "eval_batches", "log_every", "checkpoint_every", "seed", "precision", "device",
              "compile", "threads", "cpu_memory_cache", "distributed", "log_with", "fingerprint_batches", "stepz"],
    "data": ["source", "paths", "val_fraction", "nope"],
    "tokenizer": ["kind", "field", "modality", "nope"],
    "task": ["kind", "modality", "nope"],
    "sample": ["prompt", "max_new_tokens", "temperature", "top_k", "top_p", "greedy", "seed", "num_samples", "nope"],
}


def toml_value(v) -> str:
    if v == "DATE":
        return "1979-05-27T07:32:00Z"
    if v == "DEEP":
        return "[" * 300 + "]" * 300
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_text(tables: dict[str, dict]) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in body.items())
                   for name, body in tables.items())


def mutate(rng: random.Random, tables: dict[str, dict], gentle: bool = False) -> dict[str, dict]:
    """1-3 random edits; `gentle`: one value of [model], [train] or [sample] (recipes that may well train)."""
    tables = json.loads(json.dumps(tables))
    if gentle:
        table = rng.choice(["model", "train", "sample"])
        tables.setdefault(table, {})[rng.choice(KEYS[table][:-1])] = rng.choice(NASTY)
        return tables
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.88:
            table = rng.choice(list(KEYS))
            tables.setdefault(table, {})[rng.choice(KEYS[table])] = rng.choice(NASTY)
        elif kind < 0.92 and tables:
            del tables[rng.choice(list(tables))]
        elif kind < 0.96:
            tables[rng.choice(["modle", "tokenizers", "extra", "data.x"])] = {"a": rng.choice(NASTY)}
        else:
            tables["tokenizers"] = {"text": {"kind": rng.choice(["char", "bpe", "nope", 1])}}
    return tables


def recipe_cases(rng: random.Random, base: dict[str, dict], folder: Path, n: int, runs: int) -> Iterator[Case]:
    """`n` mutated recipes through `check`; the first `runs` (one gentle edit each) also through `run`."""
    for i in range(n):
        path = folder / f"fuzz_{i}.toml"
        text = toml_text(mutate(rng, base, gentle=i < runs))
        path.write_text(text)
        yield Case("recipes", f"check {path.name}", ["check", str(path)])
        if i < runs:
            yield Case("recipes", f"run {path.name}", ["run", str(path), "--out", str(folder / f"run_{i}"), "--no-progress",
                                                       "--set", "train.steps=2", "--set", "train.eval_batches=1",
                                                       "--set", "sample.num_samples=0"])


def check_passes_run_fails(results: list[Result]) -> list[str]:
    """Recipes `check` accepted and `run` then refused: `check` must catch all that `run` would."""
    checked = {r.case.name.split(" ", 1)[1]: r.outcome for r in results if r.case.name.startswith("check ")}
    return [r.case.name for r in results if r.case.family == "recipes" and r.case.name.startswith("run ")
            and checked.get(r.case.name.split(" ", 1)[1]) == "exit 0" and r.outcome != "exit 0"]


# -- damaged run directories ---------------------------------------------------------------------

def _damages(rng: random.Random, data: bytes) -> list[tuple[str, bytes | None]]:
    flipped = bytearray(data)
    for _ in range(max(1, len(data) // 200)):
        if flipped:
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return [("empty", b""), ("truncated", data[: rng.randrange(max(1, len(data)))]), ("bit flips", bytes(flipped)),
            ("not UTF-8", b"\xff\xfe\x80" + data[:50]), ("100 kB of garbage", os.urandom(100_000)),
            ("JSON list", b"[1, 2, 3]"), ("JSON number", b"42"), ("JSON null", b"null"),
            ("JSON object of nonsense", json.dumps({"step": "x", "history": {}, "plugins": "no", "model": []}).encode()),
            ("deep JSON", b"[" * 50000 + b"]" * 50000), ("deleted", None), ("a folder", b"DIR")]


def _json_edits(rng: random.Random, data: bytes) -> list[tuple[str, bytes]]:
    """The file's own JSON with one value replaced or one key deleted."""
    try:
        value = json.loads(data)
    except ValueError:
        return []
    edits = []
    for _ in range(3):
        node = value = json.loads(data)
        path = []
        while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            path.append(key)
            if not isinstance(node[key], (dict, list)):
                break
            node = node[key]
        if not path:
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.4:
            del parent[path[-1]]
            edits.append((f"{'/'.join(map(str, path))} deleted", json.dumps(value).encode()))
        else:
            parent[path[-1]] = rng.choice([None, "x", -1, 10**30, [], {}, 1.5, True])
            edits.append((f"{'/'.join(map(str, path))} = {parent[path[-1]]!r}", json.dumps(value).encode()))
    return edits


def _write(path: Path, content: bytes | None) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if content == b"DIR":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)


COMMANDS = {
    "run --resume": lambda run, recipe: ["run", str(recipe), "--out", str(run), "--resume", "--no-progress",
                                         "--set", "train.steps=6", "--set", "sample.num_samples=0"],
    "eval": lambda run, recipe: ["eval", str(run), "--limit", "1"],
    "sample": lambda run, recipe: ["sample", str(run), "--max-new-tokens", "4"],
    "score": lambda run, recipe: ["score", str(run), "--text", "the king"],
    "tokenize": lambda run, recipe: ["tokenize", str(run), "--text", "the king"],
}


def run_dir_files(run: Path) -> list[Path]:
    ckpt = max((run / "checkpoints").glob("step_*"))
    names = [run / "recipe.json", run / "run.json", run / "checkpoints" / "latest", *sorted(ckpt.iterdir()),
             *sorted((run / "tokenizers").rglob("*.*"))]
    return [p for p in names if p.exists()]


def state_read_by_plugins(rel: Path, command: str) -> bool:
    """Damage to what `Pipeline.from_run` reads through the saved-recipe loader (recipe.json, for
    eval/sample/score/tokenize) or through a tokenizer plugin's own `load()`."""
    return rel.parts[0] == "tokenizers" or rel.name == "recipe.json" and command != "run --resume"


def rundir_cases(rng: random.Random, trained: Path, recipe: Path, folder: Path, n: int,
                 keep: Callable[[Path, str], bool] = lambda rel, command: True) -> Iterator[Case]:
    """`n` copies of `trained`, each with one file damaged, each run through one command;
    `keep(file, command)` picks the pairs to draw from."""
    plan = []
    for f in run_dir_files(trained):
        data = f.read_bytes()
        plan += [(f.relative_to(trained), name, content, command) for name, content in _damages(rng, data) + _json_edits(rng, data)
                 for command in COMMANDS if keep(f.relative_to(trained), command)]
    for i in range(n):
        rel, name, content, command = rng.choice(plan)
        run = folder / f"damaged_{i}"

        def prepare(run=run, rel=rel, content=content):
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(trained, run)
            _write(run / rel, content)

        yield Case("run directories", f"{command} with {rel} {name}", COMMANDS[command](run, recipe), prepare,
                   state_read_by_plugins(rel, command))


# -- files for predict ---------------------------------------------------------------------------

def predict_inputs(folder: Path) -> dict[str, Path]:
    """Files a user might hand to `predict` by mistake, or on purpose to break it."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    made = {}

    def put(name: str, content: bytes) -> None:
        (folder / name).write_bytes(content)
        made[name] = folder / name

    good = io.BytesIO()
    Image.new("L", (8, 8), 128).save(good, "PNG")
    png = good.getvalue()
    put("empty.png", b"")
    put("random.png", os.urandom(3000))
    put("text.png", b"hello, world\n" * 10)
    put("truncated.png", png[: len(png) // 2])
    put("digit.txt", png)
    for mode, size in (("RGBA", (8, 8)), ("1", (8, 8)), ("I;16", (8, 8)), ("P", (3, 200)), ("RGB", (1, 1)), ("L", (4000, 1))):
        buf = io.BytesIO()
        Image.new(mode, size).save(buf, "PNG")
        put(f"{mode.replace(';', '')}_{size[0]}x{size[1]}.png", buf.getvalue())
    bomb = bytearray(png)
    bomb[16:24] = (60000).to_bytes(4, "big") * 2  # the IHDR claims 60000 x 60000 pixels
    put("bomb.png", bytes(bomb))
    put("noise.wav", b"RIFF" + os.urandom(200))
    (folder / "a folder").mkdir(exist_ok=True)
    made["a folder"] = folder / "a folder"
    made["missing"] = folder / "missing.png"
    return made


def predict_cases(rng: random.Random, trained: Path, folder: Path, n: int) -> Iterator[Case]:
    inputs = predict_inputs(folder)
    names = sorted(inputs)
    for i in range(n):
        chosen = rng.sample(names, rng.randint(1, 2))
        yield Case("predict files", f"predict {' '.join(chosen)}",
                   ["predict", str(trained), *map(str, (inputs[c] for c in chosen))] + ["--json"] * rng.randint(0, 1))


# -- command-line flags --------------------------------------------------------------------------

FLAG_WORDS = ["run", "check", "sample", "score", "eval", "predict", "tokenize", "mask", "show", "plugins", "list",
              "--set", "train.steps=2", "model.x=1", "train.steps=", "=", "--out", "--json", "--text", "hi", "--resume",
              "--force", "--num-processes", "-1", "0", "3", "--ids", "1,x", "99999999999999999999", "--split", "test",
              "val", "nope", "--limit", "--greedy", "--top-k", "--prompt", "--length", "100000", "--help-me",
              "--max-new-tokens", "--temperature", "--top-p", "--seed", "--modality", "--episodes", "--target-return",
              "nan", "-5", "7", "causal", "((", "\udcff", "--version"]
COUNTS = ("--max-new-tokens", "--episodes", "--limit")  # a huge count here is a long job the user asked for, not a hang


FLAGS = {  # per command: its positional argument and the flags that take a value (None: a switch)
    "sample": ("RUN", {"--prompt": 1, "--max-new-tokens": 1, "--temperature": 1, "--top-k": 1, "--top-p": 1,
                       "--seed": 1, "--greedy": None, "--no-cache": None}),
    "score": ("RUN", {"--text": 1, "--json": None}),
    "eval": ("RUN", {"--split": 1, "--limit": 1, "--json": None, "--episodes": 1, "--target-return": 1, "--greedy": None}),
    "tokenize": ("RUN", {"--text": 1, "--ids": 1, "--modality": 1, "--json": None}),
    "check": ("RECIPE", {"--set": 1}),
    "run": ("RECIPE", {"--set": 1, "--resume": None, "--force": None, "--num-processes": 1}),
    "mask show": ("RECIPE", {"--length": 1, "--set": 1}),
}
VALUES = ["-5", "-1", "0", "1", "7", "nan", "inf", "-inf", "1e999", "18446744073709551616", "x", "", "1,x", "0,1,2",
          "99999999", "hi\udcff", "the king", "train", "val", "test", "text", "train.steps=3", "model.layers=0",
          "sample.top_k=-5", "causal", "0.5", "-0.5", "2.5"]


def flag_cases(rng: random.Random, trained: Path, recipe: Path, bad_recipe: Path, folder: Path, n: int) -> Iterator[Case]:
    """Random command lines: half of them a command with its own flags and odd values, half any
    words of FLAG_WORDS; RUN, RECIPE and BAD stand for a trained run, its recipe and a broken recipe."""
    words = FLAG_WORDS + ["RUN", "RECIPE", "BAD"] * 3
    for i in range(n):
        if i % 2:
            command = rng.choice(list(FLAGS))
            positional, flags = FLAGS[command]
            argv = [*command.split(), rng.choice([positional, positional, "BAD", "nope"])]
            for flag in rng.sample(list(flags), rng.randint(1, min(3, len(flags)))):
                argv += [flag] + ([rng.choice(VALUES)] if flags[flag] else [])
        else:
            argv = [rng.choice(words) for _ in range(rng.randint(0, 7))]
        argv = [a if not (j and argv[j - 1] in COUNTS and a.lstrip("-").isdigit()) else str(min(int(a), 7))
                for j, a in enumerate(argv)]
        if argv and argv[0] == "run":
            argv += ["--out", str(folder / f"flags_{i}"), "--set", "train.steps=2", "--no-progress"]
        argv = [str(trained) if a == "RUN" else str(recipe) if a == "RECIPE" else str(bad_recipe) if a == "BAD" else a
                for a in argv]
        yield Case("command-line flags", " ".join(argv)[:160], argv)


# -- damaged HuggingFace GPT-2 directories (init_from = "hf:DIR") ---------------------------------

def tiny_gpt2(folder: Path, text: str) -> Path:
    """A 2-layer GPT-2 with a byte-level BPE tokenizer trained on `text`, saved by transformers."""
    import torch
    import transformers

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    eot = tok.token_to_id("<|endoftext|>")
    config = transformers.GPT2Config(vocab_size=len(fast), n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=eot,
                                     eos_token_id=eot)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return folder


def hf_recipe(path: Path, corpus: Path, hf_dir: Path) -> Path:
    path.write_text(f'[train]\ninit_from = "hf:{hf_dir}"\nsteps = 1\nbatch_size = 2\neval_every = 1\neval_batches = 1\n'
                    f'threads = 1\n[data]\nsource = "text"\npaths = ["{corpus}"]\n[tokenizer]\nkind = "bpe"\n'
                    '[task]\nkind = "lm"\n[sample]\nnum_samples = 0\n')
    return path


def _tensors(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _save_tensors(folder: Path, tensors) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "model.safetensors"))


def _edit_tensors(edit: Callable) -> Callable[[Path, random.Random], None]:
    def damage(folder: Path, rng: random.Random) -> None:
        tensors = _tensors(folder)
        edit(tensors, rng.choice(sorted(tensors)), rng)
        _save_tensors(folder, tensors)
    return damage


def _cast(dtype_name: str):
    import torch

    def edit(t, name, rng):
        t[name] = t[name].to(getattr(torch, dtype_name)) if dtype_name != "bool" else t[name] > 0
    return edit


def _poison(value: float):
    def edit(t, name, rng):
        t[name] = t[name].clone()
        t[name].view(-1)[rng.randrange(t[name].numel())] = value
    return edit


def _reshape(t, name, rng) -> None:
    import torch

    t[name] = torch.zeros(*[d + rng.choice([-1, 1, 5]) for d in t[name].shape])


def _config_edit(key: str, value) -> Callable[[Path, random.Random], None]:
    def damage(folder: Path, rng: random.Random) -> None:
        config = json.loads((folder / "config.json").read_text())
        if value is _DELETE:
            config.pop(key, None)
        else:
            config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
    return damage


class _Deleted:
    def __repr__(self) -> str:
        return "(deleted)"


_DELETE = _Deleted()


def _replace_file(name: str, content: bytes | None) -> Callable[[Path, random.Random], None]:
    def damage(folder: Path, rng: random.Random) -> None:
        _write(folder / name, content)
    return damage


def _bytes_damage(name: str, kind: str) -> Callable[[Path, random.Random], None]:
    def damage(folder: Path, rng: random.Random) -> None:
        data = (folder / name).read_bytes()
        _write(folder / name, dict(_damages(rng, data))[kind])
    return damage


def _pickled(kind: str) -> Callable[[Path, random.Random], None]:
    """Only pytorch_model.bin: the state dict itself, an object torch.load(weights_only=True)
    refuses, a list, or a truncated file."""
    def damage(folder: Path, rng: random.Random) -> None:
        import torch

        tensors = _tensors(folder)
        (folder / "model.safetensors").unlink()
        path = folder / "pytorch_model.bin"
        if kind == "state dict":
            torch.save(tensors, path)
        elif kind == "object":
            torch.save({"transformer.wte.weight": Random(0)}, path)
        elif kind == "list":
            torch.save(list(tensors.values()), path)
        else:
            torch.save(tensors, path)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return damage


class Random(random.Random):
    """A picklable object that is not a tensor (what weights_only refuses)."""


def _sharded(kind: str) -> Callable[[Path, random.Random], None]:
    """model.safetensors split into two shards behind an index, then: nothing else, a missing
    shard, a shard named outside the folder, or an index that is not one."""
    def damage(folder: Path, rng: random.Random) -> None:
        tensors = _tensors(folder)
        (folder / "model.safetensors").unlink()
        names = sorted(tensors)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        from safetensors.torch import save_file

        for shard, keys in shards.items():
            save_file({k: tensors[k] for k in keys}, str(folder / shard))
        weight_map = {k: shard for shard, keys in shards.items() for k in keys}
        if kind == "missing shard":
            (folder / "model-00002-of-00002.safetensors").unlink()
        elif kind == "outside":
            weight_map[names[0]] = "../model-00001-of-00002.safetensors"
        index = {"weight_map": weight_map} if kind != "not an index" else [1, 2]
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return damage


def _remove_tokenizer(folder: Path, rng: random.Random) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)


def _other_vocabulary(folder: Path, rng: random.Random) -> None:
    """A tokenizer of another vocabulary size than the weights."""
    state = json.loads((folder / "tokenizer.json").read_text())
    vocab = state["model"]["vocab"]
    for token in sorted(vocab, key=vocab.get)[-5:]:
        del vocab[token]
    state["model"]["merges"] = [m for m in state["model"]["merges"]
                                if "".join(m if isinstance(m, list) else m.split(" ")) in vocab]
    (folder / "tokenizer.json").write_text(json.dumps(state))


HF_DAMAGES: dict[str, Callable[[Path, random.Random], None]] = {
    "intact": lambda folder, rng: None,
    "a tensor missing": _edit_tensors(lambda t, name, rng: t.pop(name)),
    "a tensor renamed": _edit_tensors(lambda t, name, rng: t.__setitem__(name.replace(".weight", ".w").replace(".bias", ".b"), t.pop(name))),
    "an extra tensor": _edit_tensors(lambda t, name, rng: t.__setitem__("transformer.extra.weight", t[name].clone())),
    "prefix dropped": _edit_tensors(lambda t, name, rng: [t.__setitem__(k.removeprefix("transformer."), t.pop(k)) for k in list(t)]),
    **{f"a tensor as {d}": _edit_tensors(_cast(d)) for d in ("int32", "int64", "uint8", "bool", "float16", "bfloat16",
                                                            "float64", "complex64")},
    "a NaN": _edit_tensors(_poison(math.nan)),
    "an infinity": _edit_tensors(_poison(-math.inf)),
    "a tensor of another shape": _edit_tensors(_reshape),
    "a transposed weight": _edit_tensors(lambda t, name, rng: t.__setitem__(name, t[name].t().contiguous() if t[name].dim() == 2 else t[name])),
    **{f"model.safetensors {k}": _bytes_damage("model.safetensors", k)
       for k in ("empty", "truncated", "bit flips", "100 kB of garbage", "a folder", "JSON list")},
    "no weights file": _replace_file("model.safetensors", None),
    **{f"pytorch_model.bin only: {k}": _pickled(k) for k in ("state dict", "object", "list", "truncated")},
    **{f"sharded: {k}": _sharded(k) for k in ("fine", "missing shard", "outside", "not an index")},
    **{f"config.json {k}": _bytes_damage("config.json", k) for k in ("empty", "truncated", "not UTF-8", "JSON list",
                                                                     "JSON null", "deleted", "a folder")},
    **{f"config.json {key} = {value!r}": _config_edit(key, value) for key, value in (
        ("model_type", "llama"), ("model_type", _DELETE), ("model_type", 7), ("n_layer", "x"), ("n_layer", 0),
        ("n_layer", 3), ("n_layer", -1), ("n_layer", True), ("n_embd", 24), ("n_embd", 17), ("n_head", 0), ("n_head", 3),
        ("n_positions", 64), ("n_positions", 8), ("vocab_size", 5), ("n_inner", 40), ("n_inner", "big"),
        ("activation_function", "relu"), ("layer_norm_epsilon", -1), ("layer_norm_epsilon", "x"),
        ("tie_word_embeddings", False), ("tie_word_embeddings", "yes"), ("scale_attn_weights", False),
        ("add_cross_attention", True))},
    "no tokenizer": _remove_tokenizer,
    **{f"tokenizer.json {k}": _bytes_damage("tokenizer.json", k) for k in ("empty", "truncated", "JSON list", "deleted",
                                                                           "100 kB of garbage")},
    "tokenizer_config.json garbage": _bytes_damage("tokenizer_config.json", "100 kB of garbage"),
    "a tokenizer of another vocabulary": _other_vocabulary,
    "the directory missing": lambda folder, rng: shutil.rmtree(folder),
    "the directory a file": lambda folder, rng: (shutil.rmtree(folder), folder.write_text("x")),
    "the directory empty": lambda folder, rng: (shutil.rmtree(folder), folder.mkdir()),
}
"""What can be wrong with a GPT-2 directory, each a function (folder, rng) that damages a copy."""


def hf_dir_cases(rng: random.Random, base: Path, corpus: Path, folder: Path, n: int, runs: float = 0.25) -> Iterator[Case]:
    """`n` copies of the GPT-2 directory `base`, each with one damage of HF_DAMAGES (the first
    len(HF_DAMAGES) cases take each once, in a shuffled order), through `check` or (a fraction
    `runs` of them) `run` with one step."""
    names = sorted(HF_DAMAGES)
    rng.shuffle(names)
    for i in range(n):
        name = names[i] if i < len(names) else rng.choice(names)
        hf_dir, recipe = folder / f"hf_{i}", folder / f"hf_{i}.toml"
        seed = rng.randrange(2**32)

        def prepare(hf_dir=hf_dir, recipe=recipe, name=name, seed=seed):
            shutil.rmtree(hf_dir, ignore_errors=True)
            shutil.copytree(base, hf_dir)
            hf_recipe(recipe, corpus, hf_dir)
            HF_DAMAGES[name](hf_dir, random.Random(seed))

        run = rng.random() < runs
        argv = ["run", str(recipe), "--out", str(folder / f"hf_run_{i}"), "--no-progress"] if run else ["check", str(recipe)]
        yield Case("HF directories", f"{argv[0]} with {name}", argv, prepare)


# -- export targets (export --out) ----------------------------------------------------------------

@contextlib.contextmanager
def full_disk(limit: int = 20_000) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG, as on a full disk (RLIMIT_FSIZE, SIGXFSZ ignored)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _folder_with(files: dict[str, bytes]) -> Callable[[Path], Path]:
    def make(out: Path) -> Path:
        out.mkdir(parents=True)
        for name, content in files.items():
            (out / name).write_bytes(content)
        return out
    return make


def _earlier_export(extra: dict[str, bytes] | None = None, marker: bytes | None = None) -> Callable[[Path], Path]:
    """A folder that looks like an earlier export (as its seqmodel.json says), with `extra` files
    of the user's or another `marker`."""
    files = {"config.json": b"{}", "model.safetensors": b"x", "seqmodel.json": marker or json.dumps(
        {"format": "hf", "run": "r", "files": ["config.json", "model.safetensors"]}).encode()}
    return _folder_with(files | (extra or {}))


def _read_only(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(out.parent, 0o555)
    return out


def _symlink_to(target: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def make(out: Path) -> Path:
        real = target(out.with_name(out.name + "_real"))
        out.symlink_to(real, target_is_directory=True)
        return out
    return make


EXPORT_TARGETS: dict[str, tuple[Callable[[Path, Path], Path], bool]] = {}
"""Where `export --out` may point: name -> (function (case folder, trained run) -> the --out
path, made as the name says; whether the disk is full while the case runs)."""


def _target(name: str, make: Callable[[Path], Path] | None = None, full: bool = False) -> None:
    EXPORT_TARGETS[name] = (lambda folder, run: (make or (lambda out: out))(folder / "out"), full)


def _in_run(name: str, rel: Callable[[Path], Path]) -> None:
    EXPORT_TARGETS[name] = (lambda folder, run: rel(run), False)


for _name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
              "model.onnx", "signature.json", "notes.txt"):
    _target(f"a folder holding the user's {_name}", _folder_with({_name: b"mine"}))
_target("a new folder")
_target("a new nested folder", lambda out: out / "a" / "b")
_target("an empty folder", _folder_with({}))
_target("an earlier export", _earlier_export())
_target("an earlier export with a user file", _earlier_export({"README.md": b"mine"}))
_target("an earlier export whose seqmodel.json is garbage", _earlier_export(marker=b"\xff not json"))
_target("an earlier export whose seqmodel.json lists nothing", _earlier_export(marker=b'{"format": "hf", "files": []}'))
_target("a user's seqmodel.json", _folder_with({"seqmodel.json": b'{"mine": true}'}))
_target("a file", lambda out: (out.write_bytes(b"mine"), out)[1])
_target("a folder under a file", lambda out: (out.write_bytes(b"mine"), out / "sub")[1])
_target("a symlink to a user folder", _symlink_to(_folder_with({"notes.txt": b"mine"})))
_target("a symlink to an empty folder", _symlink_to(_folder_with({})))
_target("a read-only parent", lambda out: _read_only(out / "sub"))
_target("a name too long", lambda out: out / ("x" * 300))
_target("a full disk", None, full=True)
_target("a full disk over an earlier export", _earlier_export(), full=True)
_in_run("the run directory", lambda run: run)
_in_run("the run's checkpoints", lambda run: run / "checkpoints")
_in_run("a checkpoint", lambda run: max((run / "checkpoints").glob("step_*")))
_in_run("a new folder in checkpoints", lambda run: run / "checkpoints" / "step_9999999")
_in_run("the run's tokenizer folder", lambda run: run / "tokenizers" / "text")
_in_run("the root", lambda run: Path("/"))


def export_cases(rng: random.Random, trained: Path, folder: Path, n: int, onnx: float = 0.2) -> Iterator[Case]:
    """`n` exports of (a copy of) `trained` to the targets of EXPORT_TARGETS (each once first, in a
    shuffled order), `--format onnx` for a fraction `onnx` of them, else hf."""
    names = sorted(EXPORT_TARGETS)
    rng.shuffle(names)
    for i in range(n):
        name = names[i] if i < len(names) else rng.choice(names)
        fmt = "onnx" if rng.random() < onnx else "hf"
        case_dir, run = folder / f"export_{i}", folder / f"export_{i}" / "run"
        out_of, full = EXPORT_TARGETS[name]
        argv = ["export", str(run), "--format", fmt, "--out", "<set by prepare>"]

        def prepare(case_dir=case_dir, run=run, out_of=out_of, argv=argv):
            if case_dir.exists():
                for p in case_dir.rglob("*"):  # a read-only parent of an earlier case
                    if p.is_dir() and not p.is_symlink():
                        os.chmod(p, 0o755)
                shutil.rmtree(case_dir)
            shutil.copytree(trained, run)
            argv[-1] = str(out_of(case_dir, run))

        yield Case("export targets", f"export --format {fmt} to {name}", argv, prepare, during=full_disk if full else None)


# -- user data files: tables, image folders, audio folders, episode files -------------------------
# Each case writes a small data set with one thing wrong (or odd but valid) beside a tiny recipe
# that reads it, then runs `check` (and for some `run` with two steps): the data must train or be
# refused in one line naming what is wrong.

DATA_MODEL = '[model]\narch = "encoder"\nlayers = 1\nd_model = 16\nheads = 2\nmask = "full"\ncontext = 32\n'
DATA_TRAIN = '[train]\nsteps = 2\nbatch_size = 4\neval_every = 2\neval_batches = 1\nthreads = 1\n'


def _table_rows(rng: random.Random, n: int = 24) -> list[list]:
    return [[rng.choice(["a fine film", "a dull film", "good", "bad plot"]), i % 2] for i in range(n)]


def _csv_text(rows: list[list], header=("text", "label")) -> str:
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _jsonl_text(rows: list[list]) -> str:
    return "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)


def _table_damages(rng: random.Random) -> dict[str, Callable[[list[list]], tuple[str, bytes | None]]]:
    """name -> rows -> (file suffix, content; None: a folder instead of the file)."""
    def cell(value):
        def damage(rows):
            i = rng.randrange(len(rows))
            rows[i][1] = value
            return ".csv", _csv_text(rows).encode()
        return damage

    def every_label(value):
        return lambda rows: (".csv", _csv_text([[t, value] for t, _ in rows]).encode())

    return {
        "good csv": lambda rows: (".csv", _csv_text(rows).encode()),
        "good jsonl": lambda rows: (".jsonl", _jsonl_text(rows).encode()),
        "class names": lambda rows: (".csv", _csv_text([[t, ["neg", "pos"][y]] for t, y in rows]).encode()),
        "byte-order mark": lambda rows: (".csv", b"\xef\xbb\xbf" + _csv_text(rows).encode()),
        "empty file": lambda rows: (".csv", b""),
        "header only": lambda rows: (".csv", b"text,label\n"),
        "no label column": lambda rows: (".csv", _csv_text([[t] for t, _ in rows], ("text",)).encode()),
        "no text column": lambda rows: (".csv", _csv_text([[y] for _, y in rows], ("label",)).encode()),
        "an empty label": cell(""),
        "every label empty": every_label(""),
        "label 10**12": cell(10**12),
        "label 10**30": cell(10**30),
        "label -1": cell(-1),
        "label 0.5": cell(0.5),
        "label nan": cell("nan"),
        "one class": every_label(1),
        "an empty text": lambda rows: (".csv", _csv_text([["" if i == 0 else t, y] for i, (t, y) in enumerate(rows)]).encode()),
        "a 1 MB text": lambda rows: (".csv", _csv_text([["x" * 2**20 if i == 0 else t, y] for i, (t, y) in enumerate(rows)]).encode()),
        "not UTF-8": lambda rows: (".csv", _csv_text(rows).encode().replace(b"film", b"f\xffilm")),
        "NUL bytes": lambda rows: (".csv", _csv_text(rows).encode().replace(b"good", b"go\x00od")),
        "unbalanced quote": lambda rows: (".csv", _csv_text(rows).encode() + b'"unclosed,1\n'),
        "semicolons": lambda rows: (".csv", _csv_text(rows).replace(",", ";").encode()),
        "ragged rows": lambda rows: (".csv", _csv_text(rows).encode() + b"a,1,extra,cells\n"),
        "duplicate header": lambda rows: (".csv", _csv_text(rows, ("text", "text")).encode()),
        "random bytes": lambda rows: (".csv", os.urandom(3000)),
        "jsonl of lists": lambda rows: (".jsonl", b"[1, 2]\n" * len(rows)),
        "jsonl with a bad line": lambda rows: (".jsonl", _jsonl_text(rows).encode() + b"{not json\n"),
        "jsonl nested labels": lambda rows: (".jsonl", "".join(json.dumps({"text": t, "label": {"y": y}}) + "\n"
                                                               for t, y in rows).encode()),
        "jsonl deep": lambda rows: (".jsonl", b'{"text": "a", "label": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"),
        "a folder": lambda rows: (".csv", None),
    }


def _write_table(folder: Path, suffix: str, content: bytes | None) -> str:
    path = folder / f"table{suffix}"
    if content is None:
        path.mkdir(parents=True)
    else:
        path.write_bytes(content)
    return path.name


def table_cases(rng: random.Random, folder: Path, n: int, runs: float = 0.25) -> Iterator[Case]:
    """`n` tables through the hf source into a classifier: `check`, and `run` for about `runs` of them."""
    damages = _table_damages(rng)
    for i in range(n):
        name = rng.choice(sorted(damages))
        rows = _table_rows(rng)
        where = folder / f"table_{i}"
        command = "run" if rng.random() < runs else "check"

        def prepare(where=where, name=name, rows=rows):
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir(parents=True)
            suffix, content = damages[name](rows)
            file = _write_table(where, suffix, content)
            builder = "json" if suffix == ".jsonl" else "csv"
            (where / "r.toml").write_text(
                DATA_MODEL + DATA_TRAIN + f'[data]\nsource = "hf"\nname = "{builder}"\ndata_files = "{file}"\n'
                'text_field = "text"\nlabel_field = "label"\nval_fraction = 0.25\ncache_dir = "hf-cache"\n'
                '[tokenizer]\nkind = "char"\n[task]\nkind = "classify"\n')

        yield Case("data: tables", f"{command} {name}", _data_argv(command, where), prepare)


def _data_argv(command: str, where: Path) -> list[str]:
    if command == "check":
        return ["check", str(where / "r.toml")]
    return ["run", str(where / "r.toml"), "--out", str(where / "run"), "--no-progress", "--set", "sample.num_samples=0"]


def _png(mode: str, size: tuple[int, int], value=128) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, size, value).save(out, "PNG")
    return out.getvalue()


def _image_damages(rng: random.Random) -> dict[str, Callable[[Path], None]]:
    """name -> damage to a good tree shapes/{a,b}/{0..3}.png."""
    def put(rel: str, content: bytes):
        def damage(root: Path):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content)
        return damage

    def deep_png(top: int):
        def damage(root: Path):
            import numpy as np
            from PIL import Image

            Image.fromarray(np.full((6, 6), top, dtype=np.uint16)).save(root / "a" / "deep.png")
        return damage

    good = _png("L", (8, 8))
    bomb = bytearray(good)
    bomb[16:24] = (60000).to_bytes(4, "big") * 2
    return {
        "nothing wrong": lambda root: None,
        "an empty png": put("a/empty.png", b""),
        "a truncated png": put("b/cut.png", good[: len(good) // 2]),
        "text named .png": put("a/text.png", b"hello\n" * 20),
        "random bytes .jpg": put("b/noise.jpg", os.urandom(2000)),
        "a 60000x60000 header": put("a/bomb.png", bytes(bomb)),
        "a FIFO .png": lambda root: os.mkfifo(root / "b" / "pipe.png"),
        "a broken symlink": lambda root: os.symlink(root / "nowhere.png", root / "a" / "link.png"),
        "a symlink loop": lambda root: os.symlink(root / "a" / "loop.png", root / "a" / "loop.png"),
        "a folder named .png": lambda root: (root / "a" / "dir.png").mkdir(),
        "a text file in a class": put("b/notes.txt", b"notes"),
        "a file at the top": put("stray.png", good),
        "an empty class folder": lambda root: (root / "c").mkdir(),
        "one class only": lambda root: shutil.rmtree(root / "b"),
        "no class folders": lambda root: [shutil.rmtree(root / c) for c in ("a", "b")],
        "16-bit dark": deep_png(200),
        "16-bit bright": deep_png(60000),
        "1x1 RGBA": put("a/tiny.png", _png("RGBA", (1, 1), (1, 2, 3, 0))),
        "4000x1": put("b/wide.png", _png("L", (4000, 1))),
        "1-bit": put("b/bits.png", _png("1", (8, 8), 1)),
        "palette": put("a/pal.png", _png("P", (8, 8), 3)),
        "hidden junk": put("a/.DS_Store", os.urandom(100)),
        "an odd file name": lambda root: (root / "a" / os.fsdecode(b"odd\xff.png")).write_bytes(good),
    }


def image_cases(rng: random.Random, folder: Path, n: int, runs: float = 0.25) -> Iterator[Case]:
    """`n` class-per-folder image trees (imagefolder source, patches tokenizer, classifier)."""
    damages = _image_damages(rng)
    for i in range(n):
        name = rng.choice(sorted(damages))
        where = folder / f"images_{i}"
        command = "run" if rng.random() < runs else "check"

        def prepare(where=where, name=name):
            shutil.rmtree(where, ignore_errors=True)
            for c in ("a", "b"):
                (where / "shapes" / c).mkdir(parents=True)
                for k in range(4):
                    (where / "shapes" / c / f"{k}.png").write_bytes(_png("L", (8, 8), 40 * k + (100 if c == "b" else 0)))
            damages[name](where / "shapes")
            (where / "r.toml").write_text(
                DATA_MODEL + DATA_TRAIN + '[data]\nsource = "imagefolder"\npath = "shapes"\nval_fraction = 0.25\n'
                'test_fraction = 0.25\n[tokenizer]\nkind = "patches"\nfield = "image"\nmodality = "image"\nsize = 8\n'
                'patch = 4\n[task]\nkind = "classify"\n')

        yield Case("data: image folders", f"{command} {name}", _data_argv(command, where), prepare)


def _wav(seconds: float = 0.1, rate: int = 8000, channels: int = 1) -> bytes:
    import wave

    import numpy as np

    t = np.arange(int(rate * seconds)) / rate
    pcm = np.repeat((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)[:, None], channels, axis=1)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def _audio_damages(rng: random.Random) -> dict[str, Callable[[Path], None]]:
    """name -> damage to a good folder audio/clips/{0..5}.wav with metadata.csv (file_name,text)."""
    def metadata(text: str | bytes):
        def damage(root: Path):
            (root / "metadata.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
        return damage

    def good_rows(extra: str = "") -> str:
        return "file_name,text\n" + "".join(f"clips/{i}.wav,{i % 2}{(i + 1) % 2}\n" for i in range(6)) + extra

    def put(rel: str, content: bytes):
        return lambda root: (root / rel).write_bytes(content)

    return {
        "nothing wrong": lambda root: None,
        "byte-order mark": metadata(b"\xef\xbb\xbf" + good_rows().encode()),
        "no file_name column": metadata("name,text\n" + good_rows().split("\n", 1)[1]),
        "no text column": metadata("file_name,words\n" + good_rows().split("\n", 1)[1]),
        "a missing file": metadata(good_rows("clips/99.wav,99\n")),
        "an empty transcript": metadata(good_rows("clips/0.wav,\n")),
        "an empty file name": metadata(good_rows(",77\n")),
        "a path out of the folder": metadata(good_rows("../../etc/passwd,x\n")),
        "an absolute path": metadata(good_rows("/etc/hostname,x\n")),
        "metadata not UTF-8": metadata(good_rows().encode().replace(b",10\n", b",1\xff\n")),
        "metadata random bytes": metadata(os.urandom(500)),
        "metadata empty": metadata(b""),
        "metadata a folder": lambda root: ((root / "metadata.csv").unlink(), (root / "metadata.csv").mkdir()),
        "metadata.jsonl garbage": lambda root: ((root / "metadata.csv").unlink(),
                                                (root / "metadata.jsonl").write_bytes(b'{"file_name": "clips/0.wav"\n[1]\n')),
        "a wav of random bytes": put("clips/1.wav", b"RIFF" + os.urandom(300)),
        "an empty wav": put("clips/2.wav", b""),
        "a wav with no samples": put("clips/3.wav", _wav(0.0)),
        "a stereo wav": put("clips/4.wav", _wav(0.1, 8000, 2)),
        "a 44.1 kHz wav": put("clips/5.wav", _wav(0.05, 44100)),
        "a FIFO wav": lambda root: ((root / "clips" / "1.wav").unlink(), os.mkfifo(root / "clips" / "1.wav")),
        "a 100 kB transcript": metadata(good_rows("clips/0.wav," + "7" * 100_000 + "\n")),
        "transcripts beside the files": lambda root: ((root / "metadata.csv").unlink(),
                                                     [(root / "clips" / f"{i}.txt").write_text(f"{i % 2}") for i in range(6)]),
        "a transcript missing": lambda root: ((root / "metadata.csv").unlink(),
                                              [(root / "clips" / f"{i}.txt").write_text(f"{i % 2}") for i in range(5)]),
    }


def audio_cases(rng: random.Random, folder: Path, n: int, runs: float = 0.2) -> Iterator[Case]:
    """`n` audio folders with transcripts (audiofolder source, mel + char tokenizers, seq2seq)."""
    damages = _audio_damages(rng)
    for i in range(n):
        name = rng.choice(sorted(damages))
        where = folder / f"audio_{i}"
        command = "run" if rng.random() < runs else "check"

        def prepare(where=where, name=name):
            shutil.rmtree(where, ignore_errors=True)
            (where / "audio" / "clips").mkdir(parents=True)
            for k in range(6):
                (where / "audio" / "clips" / f"{k}.wav").write_bytes(_wav(0.1 + 0.02 * k))
            (where / "audio" / "metadata.csv").write_text(
                "file_name,text\n" + "".join(f"clips/{k}.wav,{k % 2}{(k + 1) % 2}\n" for k in range(6)))
            damages[name](where / "audio")
            (where / "r.toml").write_text(
                '[model]\narch = "encoder_decoder"\nencoder_layers = 1\nlayers = 1\nd_model = 16\nheads = 2\n'
                'context = 32\nencoder_mask = "full"\nmask = "causal"\n' + DATA_TRAIN +
                '[data]\nsource = "audiofolder"\npath = "audio"\nval_fraction = 0.2\ntest_fraction = 0.2\n'
                '[tokenizers.audio]\nkind = "mel"\nfield = "audio"\nframes = 4\n[tokenizers.text]\nkind = "char"\n'
                'field = "text"\n[task]\nkind = "seq2seq"\ninputs = ["audio"]\ntarget = "text"\n')

        yield Case("data: audio folders", f"{command} {name}", _data_argv(command, where), prepare)


def _episode_arrays(rng: random.Random, env: str) -> dict:
    import numpy as np

    n, width = 40, {"CartPole-v1": 4, "MountainCar-v0": 2, "Pendulum-v1": 3}[env]
    actions = (np.array([rng.randrange(3 if env == "MountainCar-v0" else 2) for _ in range(n)]) if env != "Pendulum-v1"
               else np.array([[rng.uniform(-2, 2)] for _ in range(n)], dtype=np.float32))
    return {"states": np.array([[rng.gauss(0, 1) for _ in range(width)] for _ in range(n)], dtype=np.float32),
            "actions": actions, "rewards": np.ones(n, dtype=np.float32), "episode_lengths": np.full(4, 10)}


def _npz_damages(rng: random.Random) -> dict[str, Callable[[dict], dict | bytes]]:
    """name -> the arrays of a good file -> the arrays (or bytes) written instead."""
    import numpy as np

    def change(**arrays):
        return lambda good: {**good, **{k: (v(good) if callable(v) else v) for k, v in arrays.items()}}

    def without(key):
        return lambda good: {k: v for k, v in good.items() if k != key}

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**13,)})
    crafted = header.getvalue() + b"\0" * 160  # an array header claiming 40 TB, then 40 values

    def crafted_npz(good):
        out = io.BytesIO()
        import zipfile

        with zipfile.ZipFile(out, "w") as z:
            for k, v in good.items():
                buf = io.BytesIO()
                np.save(buf, v)
                z.writestr(f"{k}.npy", crafted if k == "rewards" else buf.getvalue())
        return out.getvalue()

    return {
        "nothing wrong": lambda good: good,
        "float actions of width 1": change(actions=lambda g: g["actions"].reshape(-1, 1).astype(np.float32)),
        "action ids too large": change(actions=lambda g: g["actions"] + 5 if g["actions"].ndim == 1 else g["actions"]),
        "negative action ids": change(actions=lambda g: g["actions"] - 3 if g["actions"].ndim == 1 else g["actions"]),
        "states of another width": change(states=lambda g: np.zeros((40, 7), dtype=np.float32)),
        "3-D states": change(states=lambda g: g["states"][:, :, None]),
        "a NaN state": change(states=lambda g: np.where(np.arange(g["states"].size).reshape(g["states"].shape) == 5,
                                                        np.nan, g["states"])),
        "boolean actions": change(actions=lambda g: (g["actions"] > 0) if g["actions"].ndim == 1 else g["actions"]),
        "string actions": change(actions=lambda g: np.array(["left"] * 40)),
        "lengths that do not sum": change(episode_lengths=np.array([10, 10, 10])),
        "a zero length": change(episode_lengths=np.array([20, 0, 20])),
        "both boundary arrays": change(episode_starts=np.array([0, 10, 20, 30])),
        "no rewards": without("rewards"),
        "no boundaries": without("episode_lengths"),
        "one episode": change(episode_lengths=np.array([40])),
        "int8 states": change(states=lambda g: g["states"].astype(np.int8)),
        "object array": lambda good: {**good, "rewards": np.array([None] * 40, dtype=object)},
        "a shape of 10**13 in a header": crafted_npz,
        "not a zip": lambda good: b"not an npz at all",
        "an empty file": lambda good: b"",
        "zero steps": lambda good: {"states": np.zeros((0, 4), dtype=np.float32), "actions": np.zeros(0, dtype=np.int64),
                                    "rewards": np.zeros(0, dtype=np.float32), "episode_lengths": np.zeros(0, dtype=np.int64)},
    }


def episode_cases(rng: random.Random, folder: Path, n: int, runs: float = 0.25) -> Iterator[Case]:
    """`n` .npz episode files for a gymnasium environment (gym_episodes source, sar, decision)."""
    import numpy as np

    damages = _npz_damages(rng)
    for i in range(n):
        name, env = rng.choice(sorted(damages)), rng.choice(["CartPole-v1", "MountainCar-v0", "Pendulum-v1"])
        where = folder / f"episodes_{i}"
        command = "run" if rng.random() < runs else "check"
        arrays = _episode_arrays(rng, env)

        def prepare(where=where, name=name, env=env, arrays=arrays):
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir(parents=True)
            content = damages[name](arrays)
            if isinstance(content, bytes):
                (where / "mine.npz").write_bytes(content)
            else:
                np.savez(where / "mine.npz", **content)
            (where / "r.toml").write_text(
                '[model]\nlayers = 1\nd_model = 16\nheads = 2\ncontext = 15\n' + DATA_TRAIN +
                f'[data]\nsource = "gym_episodes"\nenv_id = "{env}"\npath = "mine.npz"\nval_fraction = 0.25\n'
                '[tokenizer]\nkind = "sar"\nfield = "episode"\n[task]\nkind = "decision"\ncontext_steps = 5\n'
                'metric_episodes = 1\nmax_episode_steps = 20\nreport_targets = []\n')

        yield Case("data: episode files", f"{command} {name} ({env})", _data_argv(command, where), prepare)


# -- run folders handed to `seqmodel runs` -------------------------------------------------------

def _runs_damages(rng: random.Random) -> list[tuple[str, Callable[[Path], None]]]:
    """(name, damage to a copy of a trained run folder)."""
    def fifo(path: Path) -> None:
        _write(path, None)
        os.mkfifo(path)

    def sparse(size: int):
        def damage(path: Path) -> None:
            if not path.is_file():
                _write(path, b"")
            with open(path, "r+b") as f:
                f.truncate(size)
        return damage

    def link(target: str | None):
        def damage(path: Path) -> None:
            _write(path, None)
            os.symlink(path if target is None else target, path)
        return damage

    out = []
    for rel in ("recipe.json", "run.json", "metrics.jsonl", "checkpoints", "checkpoints/latest", "STEP/state.json",
                "STEP/model.safetensors", "STEP"):
        ways = [(name, lambda path, content=content: _write(path, content))
                for name, content in _damages(rng, b'{"step": 4, "val_loss": 1.0}\n')]
        ways += [("a FIFO", fifo), ("of 300 MB", sparse(300 * 2**20)), ("a symlink loop", link(None)),
                 ("a link to /dev/zero", link("/dev/zero"))]
        out += [(f"{rel} {name}", lambda run, rel=rel, way=way: way(_runs_path(run, rel))) for name, way in ways]
    out += [("metrics.jsonl records of the wrong kind",
             lambda run: (run / "metrics.jsonl").write_text('{"step": "x"}\n{"step": 1, "val_loss": NaN}\n[1]\n'
                                                            '{"step": 2, "val_loss": "low", "elapsed_s": []}\n{"step": 3')),
            ("recipe.json values of the wrong kind",
             lambda run: (run / "recipe.json").write_text('{"task": [], "model": {"arch": 7}, "train": {"steps": "many"}}')),
            ("an undecodable folder name", lambda run: os.rename(run, Path(os.fsdecode(bytes(run) + b"\xff")))),
            ("the whole run a FIFO", lambda run: (shutil.rmtree(run), os.mkfifo(run)))]
    return out


def _runs_path(run: Path, rel: str) -> Path:
    step = max((run / "checkpoints").glob("step_*"), default=run / "checkpoints" / "step_0000004")
    return run / rel.replace("STEP", f"checkpoints/{step.name}")


def runs_cases(rng: random.Random, trained: Path, folder: Path, n: int) -> Iterator[Case]:
    """`n` folders of two copies of `trained`, one damaged, through `runs` (table, --json, --plot)."""
    damages = _runs_damages(rng)
    for i in range(n):
        name, damage = rng.choice(damages)
        where = folder / f"runs_{i}"
        flags = rng.choice([[], ["--json"], ["--plot", str(where / "curves.png")],
                            ["--plot", str(where / "curves.png"), "--metric", rng.choice(["train_loss", "nope", "lr"])]])

        def prepare(where=where, damage=damage):
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir(parents=True)
            shutil.copytree(trained, where / "good")
            shutil.copytree(trained, where / "bad")
            damage(where / "bad")

        yield Case("run folders for runs", f"runs {name} {' '.join(flags[:1] + flags[2:])}".strip(),
                   ["runs", str(where), *flags], prepare)


# -- damaged prepared stores (<stores>/streams/KEY, <stores>/fits/KEY) ----------------------------
# Each case copies the stores a trained run left, damages one file of one store (or a fitted
# tokenizer state), then `prepare`s, `run`s or `eval`s against them. Besides the outcome, an
# `exit 0` is checked for a silently wrong result: every complete store must again hold exactly
# the ids it was built with (a damaged one refused or rebuilt, never trusted).

@contextlib.contextmanager
def stores_at(root: Path) -> Iterator[None]:
    previous = os.environ.get("SEQMODEL_STORES")
    os.environ["SEQMODEL_STORES"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SEQMODEL_STORES", None)
        else:
            os.environ["SEQMODEL_STORES"] = previous


def _store_ids(root: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, bytes]:
    """Key -> ids.bin of every complete stream store of `splits` under `root`."""
    found = {}
    for d in sorted((root / "streams").glob("*")):
        try:
            split = json.loads((d / "meta.json").read_text())["split"]
            if (d / "COMPLETE").is_file() and split in splits:
                found[d.name] = (d / "ids.bin").read_bytes()
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a complete store: refused or rebuilt when read
    return found


def _swap_ids(inside: bool) -> Callable[[bytes, random.Random], bytes]:
    """A few ids replaced by another id the store holds (`inside` the vocabulary: no bounds check
    can see it) or by the largest value of the dtype (outside it)."""
    def damage(data: bytes, rng: random.Random) -> bytes:
        out, present = bytearray(data), sorted(set(data))
        for _ in range(max(1, len(data) // 500)):
            i = rng.randrange(len(out))
            out[i] = rng.choice([v for v in present if v != out[i]] or [0]) if inside else 255
        return bytes(out)
    return damage


def _store_damages() -> dict[str, Callable[[Path, random.Random], None]]:
    """name -> function (the stores root, rng) that damages one store in it."""
    def streams(root: Path, rng: random.Random) -> Path:
        return rng.choice(sorted(d for d in (root / "streams").iterdir() if d.is_dir()))

    def fits(root: Path, rng: random.Random) -> Path:
        return rng.choice(sorted(d for d in (root / "fits").iterdir() if d.is_dir()))

    def in_file(where: Callable, name: str, change: Callable[[bytes, random.Random], bytes | None]):
        def damage(root: Path, rng: random.Random) -> None:
            folder = where(root, rng)
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "COMPLETE") if name == "*" else [folder / name]
            path = rng.choice(files)
            _write(path, change(path.read_bytes() if path.is_file() else b"", rng))
        return damage

    def generic(kind: str):
        return lambda data, rng: dict(_damages(rng, data))[kind]

    def json_edit(data: bytes, rng: random.Random) -> bytes:
        edits = _json_edits(rng, data)
        return rng.choice(edits)[1] if edits else b"{}"

    out: dict[str, Callable[[Path, random.Random], None]] = {
        "ids.bin: ids swapped inside the vocabulary": in_file(streams, "ids.bin", _swap_ids(True)),
        "ids.bin: an id outside the vocabulary": in_file(streams, "ids.bin", _swap_ids(False)),
        "ids.bin: one byte more": in_file(streams, "ids.bin", lambda d, rng: d + b"\x01"),
        "meta.json: one value changed": in_file(streams, "meta.json", json_edit),
        "a fitted tokenizer state: one value changed": in_file(fits, "*", json_edit),
        "COMPLETE deleted": in_file(streams, "COMPLETE", lambda d, rng: None),
        "the store a file": lambda root, rng: (lambda d: (shutil.rmtree(d), d.write_bytes(b"x")))(streams(root, rng)),
        "the store empty": lambda root, rng: (lambda d: (shutil.rmtree(d), d.mkdir()))(streams(root, rng)),
        "a leftover temporary folder": lambda root, rng: (lambda d: shutil.copytree(d, d.with_name(f".{d.name}.tmp-1")))(
            streams(root, rng)),
        "the streams folder a file": lambda root, rng: (shutil.rmtree(root / "streams"), (root / "streams").write_bytes(b"x")),
    }
    for kind in ("empty", "truncated", "bit flips", "100 kB of garbage", "deleted", "a folder"):
        for name in ("ids.bin", "offsets.npy", "meta.json"):
            out[f"{name}: {kind}"] = in_file(streams, name, generic(kind))
        out[f"a fitted tokenizer state: {kind}"] = in_file(fits, "*", generic(kind))
    return out


STORE_DAMAGES = _store_damages()


def store_cases(rng: random.Random, stores: Path, trained: Path, recipe: Path, folder: Path, n: int) -> Iterator[Case]:
    """`n` copies of the stores root `stores` (what training `trained` from `recipe` left), each
    with one damage of STORE_DAMAGES (each once first, in a shuffled order), through `prepare`,
    `run` with two steps, or `eval` of a copy of `trained`."""
    names = sorted(STORE_DAMAGES)
    rng.shuffle(names)
    for i in range(n):
        name = names[i] if i < len(names) else rng.choice(names)
        where, seed = folder / f"stores_{i}", rng.randrange(2**32)
        command = rng.choice(["prepare", "run", "eval"])
        argv = {"prepare": ["prepare", str(recipe)],
                "run": ["run", str(recipe), "--out", str(where / "run"), "--no-progress", "--set", "train.steps=2",
                        "--set", "sample.num_samples=0"],
                "eval": ["eval", str(where / "trained"), "--limit", "2"]}[command]
        built = _store_ids(stores, ("val",) if command == "eval" else ("train", "val"))  # what the command reads
        assert built, f"no stores in {stores} to damage"

        def prepare(where=where, name=name, seed=seed):
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir(parents=True)
            shutil.copytree(stores, where / "stores")
            shutil.copytree(trained, where / "trained")
            STORE_DAMAGES[name](where / "stores", random.Random(seed))

        def check(where=where, built=built) -> str | None:
            now = _store_ids(where / "stores", ("train", "val", "test"))
            wrong = [k for k, ids in now.items() if k in built and ids != built[k]]
            return f"a complete store holds other ids than it was built with: {wrong}" if wrong else None

        yield Case("prepared stores", f"{command} with {name}", argv, prepare,
                   during=lambda where=where: stores_at(where / "stores"), check=check)
