"""`[sample]` values (issue 19 item 17): what the sampler cannot use is refused when the recipe
is read, as a one-line error naming the key, and everything accepted samples without error."""

import math

import pytest
import torch

from seqmodel.config import build
from seqmodel.errors import UserError
from seqmodel.generate import choose_token
from seqmodel.model.config import SampleConfig
from seqmodel.recipe.schema import parse_recipe

BAD = [("top_k", -5, "must be 0 (keep all) or positive"), ("top_p", -1.0, "must be between 0 and 1"),
       ("top_p", 1.5, "must be between 0 and 1"), ("top_p", math.nan, "must be between 0 and 1"),
       ("temperature", math.nan, "must be 0 (greedy) or a finite number"), ("temperature", math.inf, "must be 0 (greedy) or a finite number"),
       ("temperature", -1.0, "must be 0 (greedy)"), ("temperature", 1e-320, "must be 0 (greedy) or a finite number of at least 1e-06"),
       ("seed", 2**64, "must be between 0 and 18446744073709551614"), ("seed", -1, "must be between 0"),
       ("max_new_tokens", 0, "must be at least 1"), ("num_samples", -1, "must not be negative")]


@pytest.mark.parametrize("key,value,problem", BAD)
def test_bad_values_are_refused_naming_the_key(key, value, problem):
    assert [(k, p[: len(problem)]) for k, p in SampleConfig(**{key: value}).validate()] == [(key, problem)]


@pytest.mark.parametrize("key,value,problem", [b for b in BAD if not (isinstance(b[1], float) and not math.isfinite(b[1]))])
def test_the_recipe_reader_refuses_them_in_one_line(key, value, problem):
    recipe = {"data": {"source": "text", "paths": ["x.txt"]}, "tokenizer": {"kind": "char"}, "task": {"kind": "lm"},
              "sample": {key: value}}
    with pytest.raises(UserError) as err:
        parse_recipe(recipe, "r.toml")
    assert str(err.value).startswith(f"r.toml: [sample] {key}: {problem}") and "\n" not in str(err.value)


def draws(cfg: SampleConfig, logits: torch.Tensor) -> list[int]:
    """One token per sample of an end-of-run batch (sample k seeds its generator with seed + k)."""
    return [choose_token(logits, cfg, torch.Generator().manual_seed(cfg.seed + k)) for k in range(cfg.num_samples)]


@pytest.mark.parametrize("overrides", [{}, {"seed": 2**64 - 1, "num_samples": 1}, {"seed": 2**64 - 3, "num_samples": 3},
                                       {"seed": 0}, {"temperature": 0.0}, {"temperature": 1e-6}, {"temperature": 1e6},
                                       {"top_k": 0, "top_p": 0.0}, {"top_k": 1}, {"top_p": 1.0, "top_k": 10**9}])
def test_every_accepted_value_samples(overrides):
    cfg = build(SampleConfig, overrides, "r.toml: [sample]")
    logits = torch.linspace(-30.0, 30.0, 50)
    tokens = draws(cfg, logits)
    assert len(tokens) == cfg.num_samples and all(0 <= t < 50 for t in tokens)


def test_the_bounds_are_where_the_sampler_fails():
    logits = torch.linspace(-30.0, 30.0, 50)
    with pytest.raises((RuntimeError, ValueError)):  # seed + 1 overflows the generator's range
        draws(SampleConfig(seed=2**64 - 1, num_samples=2), logits)
    with pytest.raises(RuntimeError):  # logits / 1e-40 overflow float32: softmax gives NaN probabilities
        draws(SampleConfig(temperature=1e-40, num_samples=1), logits)
    assert build(SampleConfig, {"seed": 2**64 - 2, "num_samples": 2}, "w").seed == 2**64 - 2
    with pytest.raises(UserError, match="seed: must be between 0 and 18446744073709551614"):
        build(SampleConfig, {"seed": 2**64 - 1, "num_samples": 2}, "w")
