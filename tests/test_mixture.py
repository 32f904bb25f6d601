"""Mixtures: one model trained on several members (each its data, tokenizers, task and mask) in
one run, members drawn by weight, every member evaluated under its name."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, make_text, toml_value
from inprocess import errors, seqmodel
from processes import kill, start, wait_stopped

from seqmodel.data.mixture import MemberDraws
from seqmodel.recipe import load_recipe
from seqmodel.segments import dense_set
from seqmodel.task import masked_mean
from seqmodel.training.lifecycle import assemble


def mixture_recipe(tmp: Path, corpus: Path, members: str = "", **train) -> Path:
    """Three members over built-in data (tiny): a character LM (causal), digit images (full,
    classify) and addition (prefix, seq2seq)."""
    settings = {"steps": 12, "batch_size": 8, "eval_every": 6, "eval_batches": 2, "log_every": 3, "warmup": 2,
                "threads": 1, "lr": 0.01, "min_lr": 0.001, "checkpoint_every": 1000, **train}
    path = tmp / "mix.toml"
    path.write_text(f"""
[model]
layers = 2
d_model = 32
heads = 2
context = 32
[train]
{chr(10).join(f"{k} = {toml_value(v)}" for k, v in settings.items())}
[mixture.lm]
weight = 2
data = {{source = "text", paths = ["{corpus}"]}}
tokenizer = {{kind = "char"}}
task = {{kind = "lm"}}
sample = {{max_new_tokens = 10, num_samples = 1}}
[mixture.digits]
recipe = "vit_patches"
data = {{val_fraction = 0.2, test_fraction = 0.2}}
[mixture.add]
recipe = "addition"
loss_weight = 0.5
data = {{val_size = 40, test_size = 40, test_digits = [1, 2], train_size = 2000}}
{members}
""")
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# -- sampling -----------------------------------------------------------------------------------
def test_member_frequencies_match_the_weights():
    weights, n = [3.0, 1.0, 1.0], 30_000
    draws = MemberDraws(weights, seed=7, accum=2)
    members = np.array([draws(t // 2, t % 2)[0] for t in range(n)])
    p = np.array(weights) / sum(weights)
    counts = np.bincount(members, minlength=3)
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) < 5 * sigma), (counts, n * p)  # a false alarm about once in 10^6 runs


def test_the_draw_is_a_pure_function_and_each_member_steps_through_its_own_batches():
    steps = [(s, m) for s in range(3000) for m in range(2)]
    ordered = MemberDraws([1.0, 2.0], seed=3, accum=2)
    seen = [ordered(s, m) for s, m in steps]
    for member in (0, 1):  # the member's own index counts its draws: 0, 1, 2 ...
        own = [k for who, k in seen if who == member]
        assert own == list(range(len(own)))
    fresh = MemberDraws([1.0, 2.0], seed=3, accum=2)
    for i in random.Random(0).sample(range(len(steps)), 200):  # any order, any process: the same answer
        assert fresh(*steps[i]) == seen[i]
    assert [MemberDraws([1.0, 2.0], seed=4, accum=2)(s, m) for s, m in steps[:64]] != seen[:64]


def test_a_batch_with_every_target_masked_gives_zero_loss_not_nan(tmp_path, corpus):
    pipe = assemble(load_recipe(mixture_recipe(tmp_path, corpus)))
    module = pipe.module
    batch = dense_set("text", ids=torch.randint(5, (2, 8)), targets=torch.full((2, 8), -100))
    batch.member = "lm"
    loss, _ = module(batch)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
    assert masked_mean(torch.tensor([float("nan"), 2.0]), torch.tensor([False, True])).item() == 2.0


# -- what a mixture is ---------------------------------------------------------------------------
def test_members_share_a_modality_and_keep_their_masks(tmp_path, corpus):
    other = tmp_path / "other.txt"
    other.write_text(make_text(200, seed=3).replace("e", "é"))
    recipe = load_recipe(mixture_recipe(tmp_path, corpus, members=f"""
[mixture.lm2]
data = {{source = "text", paths = ["{other}"]}}
tokenizer = {{kind = "char"}}
task = {{kind = "lm"}}
"""))
    assert {n: m.recipe.model.mask for n, m in recipe.members.items()} == \
           {"lm": "causal", "digits": "full", "add": "prefix", "lm2": "causal"}
    pipe = assemble(recipe)
    assert pipe.members["lm"].tokenizers["text"] is pipe.members["lm2"].tokenizers["text"]
    assert "é" in pipe.tokenizers["text"].decode(pipe.tokenizers["text"].encode("é"))  # fitted on both members' text
    core = pipe.module.core
    assert sorted(core.adapters) == ["answer", "image", "question", "text"]
    views = {n: pipe.task.member_module(pipe.module, n).core for n in ("lm", "digits")}
    ts = dense_set("text", ids=torch.randint(10, (1, 12)))
    later = dense_set("text", ids=torch.cat([ts.inputs["text"].ids[:, :6], torch.randint(10, (1, 6))], 1))
    core.eval()
    with torch.no_grad():  # causal member: a later token cannot change an earlier output; full member: it does
        assert torch.allclose(views["lm"](ts)[:, :6], views["lm"](later)[:, :6], atol=1e-6)
        assert not torch.allclose(views["digits"](ts)[:, :6], views["digits"](later)[:, :6], atol=1e-4)


def test_a_mixture_trains_one_model_and_logs_every_member(tmp_path, corpus):
    out = tmp_path / "run"
    seqmodel("run", mixture_recipe(tmp_path, corpus), "--out", out, "--no-progress")
    last = metrics(out)[-1]
    for key in ("lm/val_loss", "lm/bits_per_char", "digits/val_loss", "digits/accuracy", "add/val_loss",
                "add/exact_match", "val_loss"):
        assert np.isfinite(last[key]), key
    assert (out / "loss.png").is_file() and sorted(p.name for p in (out / "tokenizers").iterdir()) == \
           ["answer", "image", "question", "text"]
    digits = json.loads(seqmodel("eval", out, "--member", "digits", "--json").stdout)
    assert digits["accuracy"] == pytest.approx(last["digits/accuracy"])
    every = json.loads(seqmodel("eval", out, "--json", "--limit", "1").stdout)
    assert {k.split("/")[0] for k in every} == {"lm", "digits", "add"}
    assert len(seqmodel("sample", out, "--member", "lm", "--max-new-tokens", "5", "--seed", "1").stdout.strip()) > 0
    done = seqmodel("sample", out, check=False)
    assert done.returncode == 2 and len(errors(done)) == 1 and "--member" in errors(done)[0]
    assert [ln for ln in seqmodel("mask", "show", mixture_recipe(tmp_path, corpus), "--length", "8").stdout.splitlines()
            if ":" in ln] == ["lm: causal", "digits: full", "add: prefix"]
    [row] = json.loads(seqmodel("runs", out, "--json").stdout)
    assert row["task"] == "mixture" and row["metrics"] == {k: v for k, v in last.items() if "/" in k}


BAD = {
    "unknown member key": (["--set", "mixture.lm.weigth=2"], "", "[mixture.lm] weigth: unknown key"),
    "zero weight": (["--set", "mixture.add.weight=0"], "", "[mixture.add] weight: expected a positive number, got 0"),
    "negative loss weight": (["--set", "mixture.add.loss_weight=-1"], "", "loss_weight: expected a positive number"),
    "no such member recipe": ([], '[mixture.x]\nrecipe = "nosuch_recipe"', "[mixture.x] recipe:"),
    "clashing modalities": ([], '[mixture.cap]\nrecipe = "caption_digits"\ndata = {train_pairs = 20}',
                            "both have a modality 'image' but tokenize it differently"),
    "an encoder-decoder member": ([], '[mixture.speech]\nrecipe = "speech_digits"', "is an encoder-decoder"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_mixtures_are_one_line_errors(tmp_path, corpus, case):
    overrides, extra, message = BAD[case]
    path = mixture_recipe(tmp_path, corpus, members=extra)
    done = seqmodel("check", path, *overrides, check=False)
    assert done.returncode == 2 and len(errors(done)) == 1 and message in errors(done)[0], done.stderr


def test_a_mixture_keeps_its_tables_for_its_members(tmp_path, corpus):
    path = mixture_recipe(tmp_path, corpus)
    path.write_text(path.read_text() + '\n[data]\nsource = "digits"\n')
    done = seqmodel("check", path, check=False)
    assert done.returncode == 2 and "[data]: a mixture gives each member its own" in errors(done)[0]
    path.write_text(mixture_recipe(tmp_path, corpus).read_text().replace("[model]\n", '[model]\narch = "encoder_decoder"\n'))
    done = seqmodel("check", path, check=False)
    assert done.returncode == 2 and "[model] arch: a mixture trains one stack" in errors(done)[0]


# -- runs you can trust ----------------------------------------------------------------------------
def test_a_mixture_killed_at_a_random_step_resumes_to_the_same_end(tmp_path, corpus):
    recipe = mixture_recipe(tmp_path, corpus, steps=16, checkpoint_every=2, eval_every=8, log_every=2)
    seqmodel("run", recipe, "--out", tmp_path / "ref", "--no-progress")
    step = random.Random().randrange(3, 15)
    out = tmp_path / "run"
    proc = start([f"step:{step}"], "run", recipe, "--out", out, "--no-progress")
    wait_stopped(proc)
    kill(proc)
    seqmodel("run", recipe, "--out", out, "--resume", "--no-progress")
    timing = ("tokens_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in metrics(out)] == \
           [{k: v for k, v in r.items() if k not in timing} for r in metrics(tmp_path / "ref")], f"killed at step {step}"


def test_two_processes_follow_the_one_process_mixture(tmp_path, corpus):
    """Each micro-step's member is the same on every process. (Image augmentation draws per
    process, as in any run: switched off here so the two runs see the very same pixels.)"""
    steady = "[mixture.digits.tokenizer]\nmax_shift = 0\nrotate = 0.0\nscale = 0.0\n"
    recipe = mixture_recipe(tmp_path, corpus, steady, steps=8, log_every=2, eval_every=4)
    cli("run", recipe, "--out", tmp_path / "one", "--no-progress")
    cli("run", recipe, "--out", tmp_path / "two", "--no-progress", "--num-processes", "2")
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [2, 4, 6, 8]
    for a, b in zip(one, two):
        for key in a:
            if key.endswith("loss"):
                assert abs(a[key] - b[key]) < 1e-4, (key, a, b)


def test_a_mixture_run_is_not_exported_silently_wrong(tmp_path, corpus):
    out = tmp_path / "run"
    seqmodel("run", mixture_recipe(tmp_path, corpus, steps=1, eval_every=1), "--out", out, "--no-progress")
    for fmt in ("hf", "onnx"):
        done = seqmodel("export", out, "--format", fmt, check=False)
        assert done.returncode == 2 and len(errors(done)) == 1 and "mixture" in errors(done)[0]


def test_keep_best_of_a_mixture_names_a_members_metric(tmp_path, corpus):
    recipe = mixture_recipe(tmp_path, corpus, keep_best="lm/accuracy")
    line = errors(seqmodel("check", recipe, check=False))[0]
    assert line.endswith("[train] keep_best: the mixture's members report no metric 'lm/accuracy' (did you mean digits/accuracy? it reports: "
                         "val_loss, train_loss, lm/val_loss, lm/bits_per_char, digits/val_loss, digits/accuracy, "
                         "add/val_loss, add/exact_match, add/cer)")
    assert ": ok (" in seqmodel("check", recipe, "--set", "train.keep_best='digits/accuracy'").stdout
