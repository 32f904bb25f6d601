"""`[train] init_from = RUN_DIR`: a new run starts from another run's weights and tokenizer state."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO, SEQMODEL, cli, make_text, tiny_char_recipe
from processes import ENV, kill, start, wait_stopped
from safetensors.torch import load_file

import seqmodel
from seqmodel.training import checkpoint


@pytest.fixture(scope="module")
def source(tmp_path_factory, corpus):
    """A finished tiny char run (the pretrained model)."""
    tmp = tmp_path_factory.mktemp("source")
    recipe = tiny_char_recipe(tmp, corpus, steps=20)
    cli("run", recipe, "--out", tmp / "run", "--no-progress")
    return tmp / "run"


def weights(run: Path) -> dict:
    return load_file(str(checkpoint.latest(run) / "model.safetensors"))


def test_a_warm_start_begins_at_the_source_weights_and_keeps_its_tokenizer(tmp_path, source):
    other = tmp_path / "other.txt"
    other.write_text(make_text(400, seed=5).replace("e", "é"))  # a character the source never saw
    recipe = tiny_char_recipe(tmp_path, other, steps=1, lr=0.0, min_lr=0.0, warmup=0)
    run = tmp_path / "ft"
    done = cli("run", recipe, "--out", run, "--no-progress", "--set", f'train.init_from="{source}"',
               "--set", 'tokenizer.unknown="skip"')
    assert "init_from" in done.stderr and "tensors loaded" in done.stderr
    assert json.loads((run / "tokenizers/text/chars.json").read_text()) == json.loads((source / "tokenizers/text/chars.json").read_text())
    before, after = weights(source), weights(run)
    assert before.keys() == after.keys()
    for k in before:  # lr 0: the optimizer moved nothing, so the weights are the source's exactly
        assert torch.equal(before[k], after[k]), k
    record = json.loads((run / "run.json").read_text())["init_from"]
    assert record["init_from"] == str(source) and record["checkpoint"] == checkpoint.latest(source).name
    assert len(record["weights_sha256"]) == 64


def test_a_warm_start_takes_the_source_shape_and_a_fresh_schedule(tmp_path, source, corpus):
    recipe = finetune_recipe(tmp_path, str(source), corpus, eval_every=4, checkpoint_every=4, log_every=4, warmup=2)
    run = tmp_path / "ft"
    cli("run", recipe, "--out", run, "--no-progress")
    saved = json.loads((run / "recipe.json").read_text())
    src = json.loads((source / "recipe.json").read_text())
    assert saved["model"] == src["model"]  # layers 2, d_model 32 ... though this recipe names none
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 4  # counted from 0, not from the source's step 20
    state = torch.load(checkpoint.latest(run) / "optimizer.pt", weights_only=True)
    steps = {int(s["step"]) for s in state["state"].values()}
    assert steps == {4}  # AdamW's moments started fresh


def test_a_position_table_is_cut_to_a_shorter_context(tmp_path, source, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1, lr=0.0, min_lr=0.0, warmup=0)
    run = tmp_path / "short"
    cli("run", recipe, "--out", run, "--no-progress", "--set", f'train.init_from="{source}"', "--set", "model.context=16")
    table = "core.positions.text.tables.0.weight"
    assert torch.equal(weights(run)[table], weights(source)[table][:16])


def test_init_from_a_checkpoint_directory(tmp_path, source, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1, lr=0.0, min_lr=0.0, warmup=0)
    ckpt = checkpoint.latest(source)
    cli("run", recipe, "--out", tmp_path / "r", "--no-progress", "--set", f'train.init_from="{ckpt}"')
    assert torch.equal(weights(tmp_path / "r")["core.decoder.ln_f.weight"], weights(source)["core.decoder.ln_f.weight"])


def test_resuming_a_warm_started_run_continues_its_own_checkpoint(tmp_path, source, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4, checkpoint_every=2)
    run = tmp_path / "r"
    init = f'train.init_from="{source}"'
    cli("run", recipe, "--out", run, "--no-progress", "--set", init, "--set", "train.steps=2")
    cli("run", recipe, "--out", run, "--no-progress", "--set", init, "--set", "train.steps=4", "--resume")
    assert checkpoint.read_state(checkpoint.latest(run))["step"] == 4
    seqmodel.load(run).generate("the", max_new_tokens=5, greedy=True)


def one_line_error(done, *needles):
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("seqmodel:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", ["missing", "file", "not_a_run", "no_checkpoint", "corrupt_weights"])
def test_bad_init_from_is_a_one_line_error(tmp_path, source, corpus, case):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1)
    target = tmp_path / "bad"
    if case == "file":
        target.write_text("not a run")
    elif case == "not_a_run":
        target.mkdir()
    elif case == "no_checkpoint":
        target.mkdir()
        (target / "recipe.json").write_text((source / "recipe.json").read_text())
    elif case == "corrupt_weights":
        fake = target / "checkpoints" / "step_0000001"
        fake.mkdir(parents=True)
        (target / "recipe.json").write_text((source / "recipe.json").read_text())
        (fake / "model.safetensors").write_text("this is not a safetensors file")
        (fake / "state.json").write_text('{"step": 1}')
        for m in ("tokenizers",):
            import shutil
            shutil.copytree(source / m, target / m)
    done = cli("run", recipe, "--out", tmp_path / "r", "--no-progress", "--set", f'train.init_from="{target}"', check=False)
    expected = {"missing": "no such run directory", "file": "not a run directory", "not_a_run": "no recipe.json",
                "no_checkpoint": "no complete checkpoint", "corrupt_weights": "not a checkpoint"}[case]
    one_line_error(done, "init_from", expected)


def test_a_run_of_another_architecture_is_a_one_line_error(tmp_path, source, corpus):
    recipe = tmp_path / "enc.toml"
    recipe.write_text(f"""
[model]
arch = "encoder"
mask = "full"
[train]
init_from = "{source}"
steps = 1
[data]
source = "text"
paths = ["{corpus}"]
[tokenizer]
kind = "char"
[task]
kind = "mlm"
""")
    done = cli("run", recipe, "--out", tmp_path / "r", "--no-progress", check=False)
    one_line_error(done, "another architecture", "'decoder'", "'encoder'")


def test_a_shape_that_does_not_fit_names_the_parameter(tmp_path, source, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1)
    done = cli("run", recipe, "--out", tmp_path / "r", "--no-progress", "--set", f'train.init_from="{source}"',
               "--set", "model.d_model=48", check=False)
    one_line_error(done, "core.adapters.text.weight", "(", "48)")


def test_another_tokenizer_kind_is_a_one_line_error(tmp_path, source, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1)
    done = cli("run", recipe, "--out", tmp_path / "r", "--no-progress", "--set", f'train.init_from="{source}"',
               "--set", 'tokenizer.kind="bpe"', "--set", "tokenizer.vocab_size=300", check=False)
    one_line_error(done, "kind", "'bpe'", "'char'")


def test_check_validates_a_warm_start_against_the_source_weights(tmp_path, source, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus)
    done = cli("check", recipe, "--set", f'train.init_from="{source}"')
    assert "tensors loaded" in done.stderr and ": ok (" in done.stdout
    done = cli("check", recipe, "--set", f'train.init_from="{source}"', "--set", "model.layers=3", check=False)
    assert done.returncode == 2 and "no parameter 'core.decoder.blocks.2" in done.stderr


def test_prepare_of_a_warm_start_prepares_the_stores_its_run_reads(tmp_path, source, monkeypatch):
    """`seqmodel prepare` assembles the pipeline as `run` does: with the source's tokenizer state,
    not one fitted afresh on the new data (whose characters differ), so the run builds nothing."""
    monkeypatch.setenv("SEQMODEL_STORES", str(tmp_path / "stores"))
    other = tmp_path / "other.txt"
    other.write_text(make_text(400, seed=5).replace("e", "é"))
    recipe = tiny_char_recipe(tmp_path, other, steps=1)
    options = ["--set", f'train.init_from="{source}"', "--set", 'tokenizer.unknown="skip"']
    prepared = cli("prepare", recipe, *options)
    assert prepared.stdout.count("prepared now") == 2
    ran = cli("run", recipe, "--out", tmp_path / "ft", "--no-progress", *options)
    assert "prepared the" not in ran.stderr  # every store the run reads was there already
    assert cli("prepare", recipe, *options).stdout.count("ready") == 2


def test_a_source_checkpoint_with_non_finite_weights_is_a_one_line_error(tmp_path, source, corpus):
    """Not blamed later on the learning rate: the import names the tensor."""
    import shutil

    from safetensors.torch import save_file

    copy = tmp_path / "nan_source"
    shutil.copytree(source, copy)
    path = checkpoint.latest(copy) / "model.safetensors"
    tensors = load_file(str(path))
    tensors["core.decoder.blocks.1.mlp.fc.weight"][0, 0] = float("nan")
    save_file(tensors, str(path))
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1)
    for argv in (["check", recipe], ["run", recipe, "--out", tmp_path / "r", "--no-progress"]):
        done = cli(*argv, "--set", f'train.init_from="{copy}"', check=False)
        one_line_error(done, "'core.decoder.blocks.1.mlp.fc.weight' has non-finite values")


def finetune_recipe(folder: Path, init_from: str, corpus: Path, **train) -> Path:
    """A fine-tuning recipe that names no [model] key: its shape is its source's."""
    settings = {"init_from": init_from, "steps": 4, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "log_every": 1,
                "checkpoint_every": 2, "warmup": 1, "threads": 1, **train}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ft.toml"
    path.write_text("[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()) + f"""
[data]
source = "text"
paths = ["{corpus}"]
[tokenizer]
kind = "char"
[task]
kind = "lm"
[sample]
num_samples = 0
""")
    return path


def test_init_from_is_read_against_the_recipe_folder_from_any_directory(tmp_path, source, corpus):
    shutil.copytree(source, tmp_path / "runs" / "pretrained")
    recipe = finetune_recipe(tmp_path / "recipes", "../runs/pretrained", corpus, steps=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd, out in ((tmp_path, "a"), (elsewhere, "b")):
        cli("run", recipe, "--out", tmp_path / out, "--no-progress", cwd=cwd)
        expected = str(tmp_path / "runs" / "pretrained")
        assert json.loads((tmp_path / out / "recipe.json").read_text())["train"]["init_from"] == expected
        assert json.loads((tmp_path / out / "run.json").read_text())["init_from"]["run"] == expected


def test_the_shipped_fine_tune_names_the_run_the_pretraining_writes_from_the_repository_root(tmp_path):
    from seqmodel.recipe.schema import load_recipe

    shipped = REPO / "recipes" / "shakespeare_finetune.toml"
    here = os.getcwd()
    try:
        sources = []
        for cwd in (REPO, tmp_path):
            os.chdir(cwd)
            sources.append(load_recipe(shipped).train.init_from)
            sources.append(load_recipe(os.path.relpath(shipped)).train.init_from)
    finally:
        os.chdir(here)
    assert sources == [str(REPO / "runs" / "bible_char_pretrain")] * 4  # `run recipes/bible_char_pretrain.toml` writes it


def test_a_warm_started_run_resumes_exactly_without_its_source(tmp_path, source, corpus):
    shutil.copytree(source, tmp_path / "runs" / "pretrained")
    recipe = finetune_recipe(tmp_path / "recipes", "../runs/pretrained", corpus)
    cli("run", recipe, "--out", tmp_path / "whole", "--no-progress")
    proc = start(["step:2"], "run", recipe, "--out", tmp_path / "cut", "--no-progress")
    wait_stopped(proc)  # after the checkpoint of step 2
    kill(proc)
    (tmp_path / "runs" / "pretrained").rename(tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = subprocess.run([*SEQMODEL, "run", tmp_path / "cut", "--resume", "--no-progress"], cwd=elsewhere, env=ENV,
                             capture_output=True, text=True)  # a new process: nothing of the source is cached
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "cut" / "metrics.jsonl").read_text().count("\n") == 4
    lines = [{k: v for k, v in json.loads(x).items() if k not in ("elapsed_s", "tokens_per_s")}
             for run in ("whole", "cut") for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert lines[:4] == lines[4:]
    whole, cut = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    shutil.rmtree(tmp_path / "moved")  # deleted: the recipe file resumes too, from another folder
    resumed = subprocess.run([*SEQMODEL, "run", recipe, "--out", tmp_path / "cut", "--resume", "--no-progress",
                              "--set", "train.steps=6"], cwd=elsewhere, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.read_state(checkpoint.latest(tmp_path / "cut"))["step"] == 6


def test_the_from_scratch_baseline_takes_the_source_shape_with_fresh_weights(tmp_path, source, corpus):
    other = tmp_path / "other.txt"
    other.write_text(make_text(400, seed=5).replace("e", "é"))  # its own fit has a character the source lacks
    recipe = finetune_recipe(tmp_path, str(source), other, steps=1, lr=0.0, min_lr=0.0, warmup=0)
    cli("run", recipe, "--out", tmp_path / "scratch", "--no-progress", "--set", "train.init_weights=false")
    shape = json.loads((source / "recipe.json").read_text())["model"]
    spelled = [f"model.{k}={json.dumps(v)}" for k, v in shape.items()]
    cli("run", recipe, "--out", tmp_path / "spelled", "--no-progress", "--set", 'train.init_from=""',
        *[a for s in spelled for a in ("--set", s)])
    scratch, explicit = (json.loads((tmp_path / r / "recipe.json").read_text()) for r in ("scratch", "spelled"))
    assert scratch["model"] == explicit["model"] == shape
    assert weights(tmp_path / "scratch").keys() == weights(tmp_path / "spelled").keys()
    for k, w in weights(tmp_path / "scratch").items():  # lr 0: the seed's initialisation, not the source's weights
        assert torch.equal(w, weights(tmp_path / "spelled")[k]), k
    assert "é" in (tmp_path / "scratch" / "tokenizers/text/chars.json").read_text()
    assert json.loads((tmp_path / "scratch" / "run.json").read_text())["init_from"]["init_weights"] is False
    said = cli("check", recipe, "--set", "train.init_weights=false").stdout
    assert f"context {shape['context']}" in said and "shape from init_from" in said and "fresh weights" in said
    said = cli("check", recipe, "--set", 'train.init_from=""').stdout
    assert "context 256" in said and "shape from this recipe's [model] and the defaults" in said
    done = cli("run", recipe, "--set", 'train.init_from=""', "--set", "train.init_weights=false", check=False)
    one_line_error(done, "[train] init_weights", "needs init_from")


def test_an_hf_directory_follows_the_recipe_folder_and_a_hub_name_stays(tmp_path, corpus):
    from seqmodel.recipe.schema import load_recipe

    (tmp_path / "recipes" / "models" / "mine").mkdir(parents=True)
    recipe = finetune_recipe(tmp_path / "recipes", "", corpus)
    named = {spec: load_recipe(recipe, [f'train.init_from="{spec}"']).train.init_from for spec in ("hf:gpt2", "hf:x/y")}
    assert named == {"hf:gpt2": "hf:gpt2", "hf:x/y": "hf:x/y"}  # hub names, given on the command line
    for spec, expected in (("hf:models/mine", tmp_path / "recipes/models/mine"), ("hf:../other", tmp_path / "other"),
                           ("hf:gpt2", "gpt2"), ("hf:openai-community/gpt2", "openai-community/gpt2")):
        recipe.write_text(recipe.read_text().replace(recipe.read_text().splitlines()[1], f"init_from = {json.dumps(spec)}"))
        assert load_recipe(recipe).train.init_from == f"hf:{expected}", spec
