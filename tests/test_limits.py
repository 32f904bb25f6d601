"""Inputs at and past the limits: sizes that cannot fit this machine, loop counts that never end,
recipes nested past reason, values `run` would reject, bytes that are not text, huge values in
errors. Each is a one-line error (or a warning) from `check` and `run` alike, before anything
large is allocated."""

import json

import psutil
import pytest
from conftest import tiny_char_recipe
from inprocess import errors, seqmodel

from seqmodel.model.transformer import Transformer
from seqmodel.plugin import ModalitySpec
from seqmodel.recipe.schema import load_recipe


def one_line(done, *needles) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(errors(done)) == 1 and errors(done)[0].startswith("error: "), done.stderr[-2000:]
    for needle in needles:
        assert needle in done.stderr, done.stderr
    return done.stderr


TOO_BIG = {
    "model.layers=1000000": "[model] layers = 1000000",
    "model.context=1000000000": "[model] context = 1000000000",
    "model.d_model=1000000": "[model] d_model = 1000000",
    "train.batch_size=1000000000": "[train] batch_size = 1000000000",
}


@pytest.mark.parametrize("override", TOO_BIG, ids=list(TOO_BIG))
@pytest.mark.parametrize("command", ["check", "run"])
def test_what_cannot_fit_in_memory_is_refused_naming_the_key(tmp_path, corpus, override, command):
    recipe = tiny_char_recipe(tmp_path, corpus)
    before = psutil.Process().memory_info().rss
    done = seqmodel(command, recipe, "--set", override, "--out", tmp_path / "run", check=False) if command == "run" \
        else seqmodel(command, recipe, "--set", override, check=False)
    one_line(done, TOO_BIG[override], "training needs at least", "more than this machine's RAM")
    assert psutil.Process().memory_info().rss - before < 2**30  # refused before allocating it


def test_the_estimate_is_a_lower_bound_of_the_real_model(tmp_path, corpus):
    """Parameter counts against the model itself, for each architecture and a few shapes."""
    from seqmodel.training import budget

    specs = [ModalitySpec("text", vocab_size=97), ModalitySpec("image", width=12, position="2d", max_positions=(4, 5))]
    for arch in ("decoder", "encoder", "encoder_decoder"):
        for overrides in ([], ["model.layers=3", "model.d_model=48", "model.heads=3", "model.mlp_ratio=2.5"],
                          ["model.tie_embeddings=false", "model.encoder_layers=1"],
                          ['model.mlp="swiglu"', "model.kv_heads=1", "model.qk_norm=true", 'model.norm="rmsnorm"',
                           "model.embed_norm=true"]):
            recipe = load_recipe(tiny_char_recipe(tmp_path, corpus), [f'model.arch="{arch}"', *overrides])
            real = Transformer(recipe.model, specs, outputs=("text",)).num_parameters()
            est = budget.estimate(recipe.model, recipe.train, specs, ("text",)).parameters
            assert est == real, (arch, overrides, est, real)
    recipe = load_recipe(tiny_char_recipe(tmp_path, corpus), ["model.bias=true"])  # biases are left out
    assert budget.estimate(recipe.model, recipe.train, specs).parameters < Transformer(recipe.model, specs).num_parameters()


def budget_most(key: str) -> int:
    from seqmodel.training import budget

    return budget.HUGE[key.replace("[", "").replace("] ", ".")]


def test_a_recipe_that_fits_is_not_refused(tmp_path, corpus):
    done = seqmodel("check", tiny_char_recipe(tmp_path, corpus))
    assert errors(done) == [] and "warning" not in done.stderr


@pytest.mark.parametrize("override, key", [("train.steps=1000000000", "[train] steps"),
                                           ("train.eval_batches=1000000000", "[train] eval_batches"),
                                           ("train.grad_accum=1000000000", "[train] grad_accum"),
                                           ("sample.max_new_tokens=1000000000", "[sample] max_new_tokens")])
def test_huge_loop_counts_get_a_warning(tmp_path, corpus, override, key):
    done = seqmodel("check", tiny_char_recipe(tmp_path, corpus), "--set", override)
    warnings = [line for line in done.stderr.splitlines() if line.startswith("seqmodel: warning:")]
    assert warnings == [f"seqmodel: warning: {tmp_path / 'tiny_char.toml'}: {key} = 1,000,000,000 is more than "
                        f"{budget_most(key):,}: this will run for a very long time"]


def insert(table: str, line: str):
    return lambda text: text.replace(f"[{table}]\n", f"[{table}]\n{line}\n", 1)


RECIPE_EDITS = {
    "1000-level table header": lambda text: text + "\n[" + ".".join(["a"] * 1000) + "]\nb = 1\n",
    "nested inline tables": insert("task", "x = " + "{a = " * 500 + "1" + "}" * 500),
    "nested arrays": insert("sample", "x = " + "[" * 5000 + "]" * 5000),
    "5000 nested parentheses in a mask": insert("model", 'mask = "' + "(" * 5000 + "causal" + ")" * 5000 + '"'),
    "a date": insert("train", "seed = 1979-05-27"),
    "a datetime": insert("task", "when = 1979-05-27T07:32:00Z"),
    "a time": insert("sample", "when = 07:32:00"),
}


@pytest.mark.parametrize("case", RECIPE_EDITS, ids=list(RECIPE_EDITS))
def test_recipes_nested_past_reason_or_holding_dates_are_one_line_errors(tmp_path, corpus, case):
    path = tiny_char_recipe(tmp_path, corpus)
    path.write_text(RECIPE_EDITS[case](path.read_text()))
    for command in ("check", "run"):
        one_line(seqmodel(command, path, "--out", tmp_path / "run", check=False) if command == "run"
                 else seqmodel(command, path, check=False), str(path))


@pytest.mark.parametrize("override, key", [("train.beta1=5", "[train] beta1"), ("train.beta2=-0.5", "[train] beta2"),
                                           ("train.seed=18446744073709551616", "[train] seed"),
                                           ("train.threads=1000000", "[train] threads"),
                                           ("train.x=1979-05-27", "--set train.x")])
def test_values_run_would_reject_are_rejected_by_check(tmp_path, corpus, override, key):
    recipe = tiny_char_recipe(tmp_path, corpus)
    one_line(seqmodel("check", recipe, "--set", override, check=False), key)


def test_a_one_megabyte_bad_value_is_not_echoed_whole(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus)
    huge = "x" * 2**20
    recipe.write_text(recipe.read_text().replace("context = 32", f'context = 32\nmask = "{huge}"'))
    assert len(one_line(seqmodel("check", recipe, check=False), "bad mask pattern")) < 1000
    recipe.write_text(recipe.read_text().replace(f'mask = "{huge}"', f'mlp_ratio = "{huge}"'))
    assert len(one_line(seqmodel("check", recipe, check=False), "[model] mlp_ratio: expected a number")) < 1000


@pytest.mark.parametrize("argv", [["score", "RUN", "--text", "caf\udce9"], ["tokenize", "RUN", "--text", "\udcff\udcfe"],
                                  ["sample", "RUN", "--prompt", "ROMEO\udc80"], ["run", "recipe\udcff.toml"]])
def test_arguments_that_are_not_utf8_are_one_line_errors(tmp_path, argv):
    one_line(seqmodel(*[str(tmp_path) if a == "RUN" else a for a in argv], check=False), "is not valid UTF-8")


def test_eval_limit_zero_is_one_line(tmp_path, corpus):
    run = tmp_path / "run"
    seqmodel("run", tiny_char_recipe(tmp_path, corpus, steps=2), "--out", run, "--no-progress")
    one_line(seqmodel("eval", run, "--limit", "0", check=False), "--limit", "got 0")


def test_mask_show_refuses_a_missing_folder_and_a_huge_length(tmp_path):
    one_line(seqmodel("mask", "show", "causal", "--out", tmp_path / "no" / "m.png", check=False), "no such folder")
    one_line(seqmodel("mask", "show", "causal", "--out", tmp_path / "m.nope", check=False), "unknown picture type")
    one_line(seqmodel("mask", "show", "causal", "--length", "100000", check=False), "--length", "100000")


@pytest.mark.parametrize("paths, needle", [('["{dir}"]', "matches only folders"), ('["{empty}"]', "matches only empty files"),
                                           ('["{dir}/*"]', "matches no file")])
def test_data_paths_that_name_no_text_say_which_path_and_key(tmp_path, corpus, paths, needle):
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.txt").write_text("")
    paths = paths.format(dir=tmp_path / "folder", empty=tmp_path / "empty.txt")
    recipe = tiny_char_recipe(tmp_path, corpus)
    done = seqmodel("check", recipe, "--set", f"data.paths={paths}", check=False)
    one_line(done, f"{recipe}: [data] paths: ", needle, json.loads(paths)[0])
