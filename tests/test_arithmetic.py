"""The arithmetic source (problems as a pure function of the index, disjoint splits, lengths,
answers checked against Python's arithmetic), and the addition recipe end to end: training,
`sample --prompt` answering a typed problem, `eval` accuracy grouped by operand length."""

from __future__ import annotations

import json
import re
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from conftest import cli, one_line_error
from seqmodel_plugins.sources.arithmetic import ArithmeticConfig, ArithmeticSource, Problems, owner

import seqmodel.registry as registry
from seqmodel.api import load

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "addition.toml"
ENTRY = EntryPoint("arithmetic", "seqmodel_plugins.sources.arithmetic:ArithmeticSource", "seqmodel.sources")
QUESTION = re.compile(r"^(\d+)([-+*])(\d+)=$")
TINY = ["model.layers=1", "model.d_model=32", "model.heads=2", "train.steps=30", "train.batch_size=16",
        "train.eval_every=30", "train.eval_batches=1", "train.checkpoint_every=30", "train.warmup=5",
        "data.train_size=2000", "data.val_size=40", "data.test_size=30", "data.test_digits=[1,2,4]", "task.max_new_tokens=6",
        "sample.num_samples=1"]


def with_arithmetic(real):
    """`entry_points` with the `arithmetic` source added when the installed distribution predates it."""
    def entry_points(group):
        found = list(real(group=group))
        if group == ENTRY.group and not any(ep.name == ENTRY.name for ep in found):
            found.append(ENTRY)
        return found

    return entry_points


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models decode token by token: a second intra-op thread only adds synchronisation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(registry, "entry_points", with_arithmetic(registry.entry_points))


def split(name: str, **config) -> Problems:
    return ArithmeticSource(ArithmeticConfig(**config)).split(name)


def parse(example: dict) -> tuple[str, str, str]:
    found = QUESTION.match(example["question"])
    assert found, example
    return found.groups()


def naive_answer(example: dict, reverse: bool) -> str:
    a, op, b = parse(example)
    value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    text = example["answer"][::-1] if reverse else example["answer"]
    assert int(text) == value, example
    return str(value)


# -- the source ------------------------------------------------------------------------------
def test_a_problem_is_a_pure_function_of_its_index():
    config = {"operators": ["+", "-", "*"], "train_size": 10**9}
    first, again = split("train", **config), split("train", **config)
    picks = [0, 1, 7, 123_456, 10**9 - 1]
    assert [first[i] for i in picks] == [again[i] for i in picks] == [first[i] for i in picks]
    assert first[-1] == first[10**9 - 1] and first[2:5] == [first[2], first[3], first[4]]
    assert not isinstance(first, list) and len(first) == 10**9
    with pytest.raises(IndexError):
        first[10**9]
    assert split("train", seed=1, **config)[0:50] != first[0:50]


@pytest.mark.parametrize("pad", [False, True])
def test_answers_match_python_arithmetic_reversed_or_not(pad):
    config = {"operators": ["+", "-", "*"], "test_digits": [1, 3, 6], "pad": pad}
    for name in ("train", "val", "test"):
        reversed_, plain = split(name, reverse=True, **config), split(name, reverse=False, **config)
        for i in range(300):
            ex, ex_plain = reversed_[i], plain[i]
            assert ex["question"] == ex_plain["question"] and ex["answer"] == ex_plain["answer"][::-1]
            naive_answer(ex, reverse=True)
            naive_answer(ex_plain, reverse=False)
            a, op, b = parse(ex)
            assert op != "-" or int(a) >= int(b)  # no negative answers
            if not pad:
                assert ex_plain["answer"] == naive_answer(ex_plain, reverse=False)  # no leading zeros


def test_lengths_follow_the_configuration():
    train = split("train", min_digits=2, max_digits=4)
    for ex in train[:300]:
        a, _, b = parse(ex)
        assert ex["digits"] in (2, 3, 4) and max(len(a), len(b)) == ex["digits"] and min(len(a), len(b)) >= 2
    test = split("test", min_digits=1, max_digits=3, test_digits=[2, 5], test_size=400)
    assert [ex["digits"] for ex in test].count(5) == 200
    for ex in test:
        a, _, b = parse(ex)
        assert max(len(a), len(b)) == ex["digits"] and min(len(a), len(b)) >= 1
    padded = split("test", test_digits=[4], pad=True, operators=["+", "*"])
    for ex in padded[:100]:
        a, op, b = parse(ex)
        assert len(a) == len(b) == 4 and len(ex["answer"]) == (5 if op == "+" else 8)


def test_held_out_splits_are_disjoint_from_training_and_each_other():
    config = {"min_digits": 1, "max_digits": 2, "test_digits": [1, 2], "operators": ["+", "-"], "held_out": 0.1,
              "train_size": 20_000, "val_size": 2000, "test_size": 2000}
    seen = {name: {ex["question"] for ex in split(name, **config)} for name in ("train", "val", "test")}
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]
    every = [f"{a}+{b}=" for a in range(100) for b in range(100)] + [f"{a}-{b}=" for a in range(100) for b in range(a + 1)]
    owners = {q: owner(0, *parse({"question": q}), 0.1) for q in every}
    assert all(owners[q] == name for name, questions in seen.items() for q in questions)
    shares = {name: list(owners.values()).count(name) / len(every) for name in ("train", "val", "test")}
    assert shares == pytest.approx({"train": 0.8, "val": 0.1, "test": 0.1}, abs=0.01)


def test_too_few_problems_of_a_length_is_a_clear_error():
    from seqmodel.errors import UserError

    with pytest.raises(UserError, match="no 1-digit problem of the val split .* raise held_out"):
        [ex for ex in split("val", min_digits=1, max_digits=1, operators=["-"], held_out=0.0001)]


@pytest.mark.parametrize("key, value, problem", [
    ("operators", '["/"]', "operators: expected a non-empty list of '+', '-', '*'"),
    ("max_digits", "0", "max_digits: must be in [1, 40]"),
    ("test_digits", "[]", "test_digits: expected a non-empty list"),
])
def test_bad_settings_name_the_key(registered, key, value, problem):
    line = one_line_error(cli("check", RECIPE, *sets(TINY), "--set", f"data.{key}={value}", check=False))
    assert problem in line


# -- the recipe, end to end -----------------------------------------------------------------
def sets(overrides: list[str]) -> list[str]:
    return [arg for s in overrides for arg in ("--set", s)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "entry_points", with_arithmetic(registry.entry_points))
        out = tmp_path_factory.mktemp("addition") / "run"
        cli("run", RECIPE, "--out", out, "--no-progress", *sets(TINY))
        yield out


def test_sample_answers_a_typed_problem(registered, run_dir):
    done = cli("sample", run_dir, "--prompt", "12+34=")
    answer = done.stdout.strip()
    assert re.fullmatch(r"\d*", answer), done.stdout
    run = load(run_dir)
    task = run.task
    direct = task.transcribe(run.model, task.encoder_segments(("12+34=",)))
    assert answer == direct  # the prompt is the question itself, not a file to read
    assert "not in this run's vocabulary: '/'" in one_line_error(cli("sample", run_dir, "--prompt", "12/34=", check=False))


def test_eval_groups_exact_match_by_a_field_as_a_naive_recount(registered, run_dir):
    metrics = json.loads(cli("eval", run_dir, "--split", "test", "--json", "--no-progress").stdout)
    run = load(run_dir)
    task, examples = run.task, run.pipeline.examples("test")
    hits: dict[int, list[bool]] = {}
    with torch.no_grad():
        for ex in examples:
            got = task.transcribe(run.model, task.encoder_segments((ex["question"],)))
            hits.setdefault(ex["digits"], []).append(got == ex["answer"])
    assert sorted(hits) == [1, 2, 4]
    for digits, row in hits.items():
        assert metrics[f"examples[digits={digits}]"] == len(row) == 10
        assert metrics[f"exact_match[digits={digits}]"] == pytest.approx(sum(row) / len(row))
    assert metrics["exact_match"] == pytest.approx(sum(map(sum, hits.values())) / 30)


def test_group_by_a_field_the_source_lacks_is_named(registered):
    line = one_line_error(cli("check", RECIPE, *sets(TINY), "--set", 'task.group_by="length"', check=False))
    assert "[task] group_by: the source has no field 'length' (it has: question, answer, digits, op)" in line
