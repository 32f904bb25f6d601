"""End to end through the CLI: train, sample, score, eval, resume after SIGINT, bad recipes."""

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SEQMODEL, cli, tiny_char_recipe


def last_metrics(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    recipe = tiny_char_recipe(tmp, corpus)
    cli("run", recipe, "--out", tmp / "run", "--no-progress")
    return tmp / "run"


def test_run_directory_holds_everything(trained):
    for name in ("recipe.json", "recipe.toml", "run.json", "metrics.jsonl", "loss.png", "samples.txt", "tokenizers/text/chars.json"):
        assert (trained / name).is_file(), name
    final = last_metrics(trained)
    assert final["step"] == 30 and final["val_loss"] < 3.0  # from ln(vocab) ~ 3.5
    assert json.loads((trained / "run.json").read_text())["plugins"][0]["distribution"] == "seqmodel"


def test_greedy_sample_same_with_and_without_cache(trained):
    args = ("sample", trained, "--prompt", "KING:", "--greedy", "--max-new-tokens", "80")
    cached, uncached = cli(*args).stdout, cli(*args, "--no-cache").stdout
    assert cached == uncached and cached.startswith("KING:") and len(cached) > 60


def test_score_is_causal(trained):
    a = json.loads(cli("score", trained, "--text", "The king doth speak of love.", "--json").stdout)
    b = json.loads(cli("score", trained, "--text", "The king doth go to war now!", "--json").stdout)
    k = len("The king doth ")
    assert [t["logprob"] for t in a["tokens"][:k]] == [t["logprob"] for t in b["tokens"][:k]]
    assert a["tokens"][k + 1]["logprob"] != b["tokens"][k + 1]["logprob"]
    assert a["bits_per_char"] > 0 and a["tokens"][0]["logprob"] is None


def test_eval_json_reports_bits_per_char(trained):
    m = json.loads(cli("eval", trained, "--json").stdout)
    assert abs(m["bits_per_char"] - m["loss"] / 0.6931471805599453) < 1e-9  # chars == tokens for char
    assert m["tokens"] > 1000


def test_python_api_matches_cli(trained):
    import seqmodel

    run = seqmodel.load(trained)
    text = run.generate("KING:", greedy=True, max_new_tokens=80)
    assert text + "\n" == cli("sample", trained, "--prompt", "KING:", "--greedy", "--max-new-tokens", "80").stdout


def test_sigint_then_the_printed_command_resumes_exactly(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=200, eval_every=50, checkpoint_every=1000)
    overrides = ["--set", "train.lr=0.02", "--set", "model.layers=1"]  # the hint must carry these
    cli("run", recipe, "--out", tmp_path / "full", "--no-progress", *overrides)
    proc = subprocess.Popen([*SEQMODEL, "run", str(recipe), "--out", str(tmp_path / "cut"), "--no-progress", *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    command = shlex.split(err.split("Continue with: ")[1].strip())
    assert command == ["seqmodel", "run", str(tmp_path / "cut"), "--resume"]
    stopped = json.loads((tmp_path / "cut" / "checkpoints" / (tmp_path / "cut" / "checkpoints" / "latest").read_text() / "state.json").read_text())["step"]
    assert 20 <= stopped < 200
    cli(*command[1:], "--no-progress")  # the printed command, as typed
    full, cut = last_metrics(tmp_path / "full"), last_metrics(tmp_path / "cut")
    assert (cut["step"], cut["val_loss"], cut["train_loss"]) == (full["step"], full["val_loss"], full["train_loss"])
    assert "layers = 1" in (tmp_path / "cut" / "recipe.toml").read_text()  # what ran, overrides included


BAD = {  # (text to replace in a good recipe, replacement, expected message)
    "unknown key": ("steps = 30", "stepz = 30", "[train] stepz: unknown key (did you mean steps?)"),
    "wrong type": ("steps = 30", 'steps = "many"', "[train] steps: expected an integer, got 'many'"),
    "bad value": ("layers = 2", 'layers = 2\narch = "decodr"', "[model] arch: expected one of decoder, encoder, encoder_decoder"),
    "unknown plugin": ('kind = "lm"', 'kind = "lmm"', "unknown task plugin 'lmm' (did you mean lm?"),
    "bad mask": ("layers = 2", 'layers = 2\nmask = "causl"', "[model] mask: bad mask pattern 'causl'"),
    "missing data file": ("tiny.txt", "nonexistent.txt", "matches no file"),
    "not toml": ("[train]", "[train", "not valid TOML"),
    "unknown table": ("[sample]", "[sampel]", "[sampel]: unknown table (did you mean [sample]?)"),
    "several sources": ('source = "text"', 'source = ["text", "hf"]', "[data] source: expected the name of one source "
                        "plugin (a string), got ['text', 'hf']; a recipe has one source"),
    "a number for a plugin": ('kind = "lm"', "kind = 3", "[task] kind: expected the name of one task plugin (a string), got 3"),
    "no source": ('source = "text"', "", "[data] source: required, the name of a source plugin"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipes_give_one_line_errors(tmp_path, corpus, case):
    old, new, expected = BAD[case]
    text = tiny_char_recipe(tmp_path, corpus).read_text()
    assert old in text
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text.replace(old, new, 1))
    done = cli("check", recipe, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert expected in done.stderr, done.stderr
    assert str(recipe) in done.stderr


def test_missing_recipe_file():
    done = cli("run", "no/such/recipe.toml", check=False)
    assert done.returncode == 2 and done.stderr == "error: no/such/recipe.toml: no such recipe file\n"


def test_set_overrides_are_typed_and_validated(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus)
    done = cli("check", recipe, "--set", "train.steps=abc", check=False)
    assert done.returncode == 2 and "[train] steps: expected an integer, got 'abc'" in done.stderr
    done = cli("check", recipe, "--set", "model.layers=3")
    assert "3 layers" in done.stdout


def test_huggingface_tokenizers_importable_from_repo_root():
    for cmd in ([sys.executable, "-c", "import tokenizers, sys; print(tokenizers.__file__); tokenizers.Tokenizer"],
                [sys.executable, "-m", "seqmodel", "--version"]):
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); import tokenizers; print(tokenizers.__file__)"],
                          cwd=REPO, capture_output=True, text=True)
    assert "site-packages" in done.stdout or "dist-packages" in done.stdout


def test_every_shipped_recipe_validates():
    from seqmodel.recipe.schema import load_recipe

    recipes = sorted((REPO / "recipes").glob("*.toml"))
    assert recipes
    for path in recipes:
        recipe = load_recipe(path)
        assert path.read_text().startswith(f"# seqmodel run recipes/{path.name}"), path
        assert recipe.model.validate() == []
