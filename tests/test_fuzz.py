"""Random and garbled recipes and command lines: always a valid config or a one-line error
(exit code 2), never a traceback."""

import contextlib
import io
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqmodel import cli
from seqmodel.errors import UserError
from seqmodel.recipe import TABLES, Recipe, parse_recipe

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
