"""Random and garbled recipes and command lines: always a valid config or a one-line error
(exit code 2), never a traceback."""

import contextlib
import io

import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqmodel import cli
from seqmodel.errors import UserError
from seqmodel.recipe.schema import TABLES, Recipe, parse_recipe

KEYS = ["arch", "layers", "d_model", "heads", "mlp_ratio", "dropout", "mask", "layer_masks", "context", "steps",
        "batch_size", "grad_accum", "lr", "min_lr", "warmup", "precision", "seed", "source", "kind", "paths", "field",
        "modality", "val_fraction", "unknown", "position", "prompt", "temperature", "top_k", "stepz", "", "ärch"]
NAMES = ["char", "lm", "text", "shakespeare", "hf", "digits", "nope", "", "classify"]
MASKS = ["causal", "full", "prefix", "sliding_window:4", "local:2|segment", "causl", "(", "modality:a>b", "local:-1"]

scalars = st.one_of(
    st.integers(-5, 2**40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.sampled_from(NAMES + MASKS + ["fp32", "bf16", "fp16", "decoder", "encoder", "encoder_decoder"]), st.text(max_size=8),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3))
tables = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)
recipes = st.dictionaries(st.sampled_from([*TABLES, "modle", "extra"]), st.one_of(tables, scalars), max_size=7)


def good_base() -> dict:
    return {"data": {"source": "text", "paths": ["x.txt"]}, "tokenizer": {"kind": "char"}, "task": {"kind": "lm"}}


def assert_valid_or_one_line_error(raw) -> None:
    try:
        assert isinstance(parse_recipe(raw, "fuzz.toml"), Recipe)
    except UserError as err:
        assert "\n" not in str(err) and str(err).startswith("fuzz.toml")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes)
def test_random_recipes(raw):
    assert_valid_or_one_line_error(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["model", "train", "data", "tokenizer", "task", "sample"]), tables)
def test_random_values_in_an_otherwise_good_recipe(section, table):
    raw = good_base()
    raw[section] = {**raw.get(section, {}), **table}
    assert_valid_or_one_line_error(raw)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet='[]="\n abc.=1_-#{}\'\\', max_size=80))
def test_garbled_toml_text(text):
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # read_toml turns this into a one-line error (see test_runner)
    assert_valid_or_one_line_error(raw)


ARGS = ["run", "check", "sample", "score", "eval", "predict", "tokenize", "--set", "train.steps=2", "model.x=1",
        "garbage", "--out", "--json", "--text", "hi", "--resume", "--num-processes", "-1", "0", "--ids", "1,x",
        "--split", "test", "nope", "--limit", "--greedy", "--top-k", "--prompt", "=", "--help-me"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(ARGS), min_size=0, max_size=6))
def test_random_command_lines(tmp_path, argv):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstepz = 1\n")
    argv = [str(bad) if a == "garbage" else str(tmp_path / "no-run") if a == "nope" else a for a in argv]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as stop:
            code = stop.code
    assert code == 2, (argv, err.getvalue())
    assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("error: "), (argv, err.getvalue())


# -- the whole command line, in process: recipes, damaged run directories, predict files, flags --
# (tests/fuzzing.py; `python benchmarks/fuzz_report.py` prints the counts for many more cases)

import random  # noqa: E402

import fuzzing  # noqa: E402
import pytest  # noqa: E402
from conftest import tiny_char_recipe  # noqa: E402
from inprocess import seqmodel  # noqa: E402


def digits_recipe(folder) -> str:
    path = folder / "tiny_digits.toml"
    path.write_text('[model]\narch = "encoder"\nlayers = 1\nd_model = 16\nheads = 2\nmask = "full"\ncontext = 16\n'
                    '[train]\nsteps = 2\nbatch_size = 8\neval_every = 2\neval_batches = 1\nthreads = 1\n'
                    '[data]\nsource = "digits"\n[tokenizer]\nkind = "patches"\nfield = "image"\nmodality = "image"\n'
                    '[task]\nkind = "classify"\n')
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("fuzz")
    recipe = tiny_char_recipe(tmp, corpus, steps=4, checkpoint_every=2, eval_every=2)
    seqmodel("run", recipe, "--out", tmp / "run", "--no-progress")
    return recipe, tmp / "run"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz_digits")
    seqmodel("run", digits_recipe(tmp), "--out", tmp / "run", "--no-progress")
    return tmp / "run"


def assert_clean(results) -> None:
    print("\n" + fuzzing.table(results))
    bad = [r for r in results if r.outcome not in fuzzing.GOOD]
    assert not bad, "\n\n".join(f"{r.case.name}: {r.outcome}\n{r.detail}" for r in bad[:5])


def base_tables(recipe) -> dict:
    import tomllib

    return tomllib.loads(recipe.read_text())


@pytest.mark.parametrize("n, runs", [pytest.param(40, 12, id="fast"), pytest.param(400, 100, id="more", marks=pytest.mark.slow)])
def test_mutated_recipes(tmp_path, trained, monkeypatch, n, runs):
    monkeypatch.chdir(tmp_path)  # a run without --out writes runs/ here
    cases = fuzzing.recipe_cases(random.Random(0), base_tables(trained[0]), tmp_path, n, runs)
    results = [fuzzing.run_case(c) for c in cases]
    assert_clean(results)
    assert fuzzing.check_passes_run_fails(results) == []


@pytest.mark.parametrize("n", [pytest.param(40, id="fast"), pytest.param(500, id="more", marks=pytest.mark.slow)])
def test_damaged_run_directories(tmp_path, trained, monkeypatch, n):
    monkeypatch.chdir(tmp_path)
    recipe, run = trained
    keep = lambda rel, command: not fuzzing.state_read_by_plugins(rel, command)  # noqa: E731
    assert_clean([fuzzing.run_case(c) for c in fuzzing.rundir_cases(random.Random(1), run, recipe, tmp_path, n, keep)])


def test_damaged_run_directories_deeply_nested_records_and_tokenizer_state(tmp_path, trained, monkeypatch):
    """Damage that once escaped as tracebacks: a recipe.json nested past Python's recursion limit,
    a tokenizer state file its plugin cannot read."""
    monkeypatch.chdir(tmp_path)
    recipe, run = trained
    cases = fuzzing.rundir_cases(random.Random(4), run, recipe, tmp_path, 40, fuzzing.state_read_by_plugins)
    assert_clean([fuzzing.run_case(c) for c in cases])


@pytest.mark.parametrize("n", [pytest.param(15, id="fast"), pytest.param(150, id="more", marks=pytest.mark.slow)])
def test_files_for_predict(tmp_path, classifier, n):
    assert_clean([fuzzing.run_case(c) for c in fuzzing.predict_cases(random.Random(2), classifier, tmp_path / "in", n)])


@pytest.mark.parametrize("n", [pytest.param(60, id="fast"), pytest.param(800, id="more", marks=pytest.mark.slow)])
def test_command_line_flags(tmp_path, trained, monkeypatch, n):
    monkeypatch.chdir(tmp_path)
    recipe, run = trained
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstepz = 1\n")
    assert_clean([fuzzing.run_case(c) for c in fuzzing.flag_cases(random.Random(3), run, recipe, bad, tmp_path, n)])


# -- damaged HuggingFace GPT-2 directories and export targets (tests/fuzzing.py, their own section) --

@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, corpus):
    pytest.importorskip("transformers")
    return fuzzing.tiny_gpt2(tmp_path_factory.mktemp("fuzz_gpt2") / "gpt2", corpus.read_text())


@pytest.mark.parametrize("n", [pytest.param(16, id="fast"), pytest.param(len(fuzzing.HF_DAMAGES) * 2, id="more", marks=pytest.mark.slow)])
def test_damaged_hf_directories(tmp_path, gpt2_dir, corpus, monkeypatch, n):
    """`init_from = "hf:DIR"` through check and run: missing, renamed or extra tensors, other dtypes,
    NaN, truncated or pickled weights, bad config.json or tokenizer files."""
    monkeypatch.chdir(tmp_path)
    assert_clean([fuzzing.run_case(c) for c in fuzzing.hf_dir_cases(random.Random(5), gpt2_dir, corpus, tmp_path, n)])


@pytest.mark.parametrize("n", [pytest.param(16, id="fast"), pytest.param(len(fuzzing.EXPORT_TARGETS) * 3, id="more", marks=pytest.mark.slow)])
def test_export_targets(tmp_path, trained, monkeypatch, n):
    """`export --out` at user files, a run's checkpoints, a file, a symlink, a read-only folder, a full disk ..."""
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    assert_clean([fuzzing.run_case(c) for c in fuzzing.export_cases(random.Random(6), trained[1], tmp_path, n)])


# -- user data files and run folders (tests/fuzzing.py, "user data files" and "run folders") ----

DATA_FAMILIES = {"tables": fuzzing.table_cases, "image folders": fuzzing.image_cases,
                 "audio folders": fuzzing.audio_cases, "episode files": fuzzing.episode_cases}


@pytest.mark.parametrize("family", sorted(DATA_FAMILIES))
@pytest.mark.parametrize("n", [pytest.param(4, id="fast"), pytest.param(60, id="more", marks=pytest.mark.slow)])
def test_user_data_files(tmp_path, monkeypatch, family, n):
    monkeypatch.chdir(tmp_path)
    assert_clean([fuzzing.run_case(c) for c in DATA_FAMILIES[family](random.Random(5), tmp_path, n)])


@pytest.mark.parametrize("n", [pytest.param(12, id="fast"), pytest.param(150, id="more", marks=pytest.mark.slow)])
def test_run_folders_for_runs(tmp_path, trained, n):
    _, run = trained
    assert_clean([fuzzing.run_case(c) for c in fuzzing.runs_cases(random.Random(6), run, tmp_path, n)])


# -- damaged prepared stores (tests/fuzzing.py, "prepared stores") -----------------------------

@pytest.mark.parametrize("n", [pytest.param(10, id="fast"), pytest.param(len(fuzzing.STORE_DAMAGES) * 3, id="more", marks=pytest.mark.slow)])
def test_damaged_prepared_stores(tmp_path, corpus, monkeypatch, n):
    """Flipped, swapped, out-of-vocabulary, truncated or missing store files and fitted tokenizer
    states through prepare, run and eval: refused in one line or rebuilt, never trusted."""
    monkeypatch.chdir(tmp_path)
    recipe = tiny_char_recipe(tmp_path, corpus, steps=2, checkpoint_every=2, eval_every=2)
    with fuzzing.stores_at(tmp_path / "stores"):
        seqmodel("run", recipe, "--out", tmp_path / "trained", "--no-progress")
    cases = fuzzing.store_cases(random.Random(7), tmp_path / "stores", tmp_path / "trained", recipe, tmp_path, n)
    assert_clean([fuzzing.run_case(c) for c in cases])
