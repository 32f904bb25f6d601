"""benchmarks/ablate.py: equal-time interpolation, paired differences, the choice of the best
combination, the KV-cache size, and a tiny ablation end to end."""

import json
import sys

import pytest
from conftest import REPO, tiny_char_recipe

from seqmodel.model.config import ModelConfig
from seqmodel.model.transformer import Transformer
from seqmodel.plugin import ModalitySpec

sys.path.insert(0, str(REPO / "benchmarks"))
import ablate  # noqa: E402


def test_loss_at_interpolates_between_evaluations():
    evals = [(10.0, 100, 3.0), (20.0, 200, 2.0), (40.0, 400, 1.0)]
    assert ablate.loss_at(evals, 15.0) == pytest.approx(2.5)
    assert ablate.loss_at(evals, 30.0) == pytest.approx(1.5)
    assert ablate.loss_at(evals, 40.0) == 1.0 and ablate.loss_at(evals, 99.0) == 1.0


def fake(val, train_s, s_per_step=None):
    """A run of 10 steps evaluated at 0 and 10; its median step time defaults to train_s / 10."""
    return {"val_loss": val, "train_s": train_s, "evals": [(0.0, 0, 4.0), (train_s, 10, val)], "tokens_per_s": 1.0,
            "steps": 10, "s_per_step": train_s / 10 if s_per_step is None else s_per_step, "params": 1, "kv_cache_bytes": 1}


def test_differences_are_paired_by_seed_and_the_best_takes_one_per_group():
    runs = {"baseline": [fake(2.0, 10), fake(2.2, 10)], "swiglu": [fake(1.9, 10), fake(2.1, 10)],
            "relu2": [fake(1.95, 10), fake(2.19, 10)], "mqa": [fake(2.1, 5), fake(2.3, 5)], "rmsnorm": [fake(2.0, 10), fake(2.3, 10)]}
    rows = ablate.summarise(runs)
    assert rows["swiglu"]["delta"] == pytest.approx((-0.1, 0.0))
    assert rows["relu2"]["delta"][0] == pytest.approx(-0.03) and rows["relu2"]["delta"][1] > 0
    assert rows["mqa"]["time_budget_s"] == 5
    assert rows["baseline"]["val_loss_at_time"][0] == pytest.approx((3.0 + 3.1) / 2)  # half way to the end
    assert ablate.choose_best(rows, "steps") == ["swiglu"]  # the better of the two MLPs
    assert ablate.choose_best(rows, "time") == ["mqa", "swiglu"]  # at 5 s the others are half way; rmsnorm still loses


@pytest.mark.parametrize("kv_heads", [0, 1])
def test_kv_cache_bytes_is_layers_times_kv_heads_times_context(kv_heads):
    cfg = ModelConfig(d_model=32, heads=4, kv_heads=kv_heads, layers=3, context=20)
    core = Transformer(cfg, [ModalitySpec("text", vocab_size=9)], outputs=("text",))
    assert ablate.kv_cache_bytes(core) == 3 * 2 * (kv_heads or 4) * 8 * 20 * 4


def test_a_tiny_ablation_end_to_end(tmp_path, corpus, capsys):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4, eval_every=2)
    result = ablate.main(["--recipe", str(recipe), "--seeds", "1", "--options", "baseline,swiglu,mqa", "--best", "swiglu,mqa",
                          "--speed-rounds", "1", "--speed-steps", "3", "--json", str(tmp_path / "out.json")])
    assert set(result["rows"]) == {"baseline", "swiglu", "mqa", "best: swiglu+mqa"}
    assert result["runs"]["best: swiglu+mqa"][0]["overrides"][-2:] == ["model.mlp=swiglu", "model.kv_heads=1"]
    assert result["rows"]["mqa"]["kv_cache_bytes"] * 2 == result["rows"]["baseline"]["kv_cache_bytes"]  # 2 heads -> 1
    assert "| best: swiglu+mqa |" in capsys.readouterr().out and (tmp_path / "out.json").is_file()
    assert set(result["speed"]) == set(result["rows"]) and result["rows"]["mqa"]["paced_by"] == "side-by-side"
    again = ablate.main(["--recipe", str(recipe), "--from-json", str(tmp_path / "out.json"), "--speed-rounds", "0"])
    resumed = ablate.main(["--recipe", str(recipe), "--seeds", "1", "--options", "baseline,swiglu,mqa", "--best", "swiglu,mqa",
                           "--speed-rounds", "0", "--json", str(tmp_path / "out.json"), "--resume"])
    assert resumed["runs"] == again["runs"]  # nothing retrained
    assert again["runs"] == json.loads(json.dumps(result["runs"])) and again["rows"]["best: swiglu+mqa"]["val_loss"] == result["rows"]["best: swiglu+mqa"]["val_loss"]


def test_paced_time_discounts_a_run_slowed_by_its_neighbours():
    """A run that took 4x as long because the machine was busy is compared at equal elapsed time
    as if it were slow; paced by its own median step time or by a side-by-side speed measurement,
    as what it is."""
    runs = {"baseline": [fake(2.0, 10)], "qk_norm": [fake(1.9, 40, s_per_step=1.0)], "mqa": [fake(2.0, 5)]}
    rows = ablate.summarise(runs)
    assert rows["qk_norm"]["delta_at_time"][0] > 0.5  # at 5 s elapsed it is an eighth of the way
    assert rows["qk_norm"]["paced_budget_s"] == 5 and rows["qk_norm"]["delta_at_paced_time"][0] == pytest.approx(-0.05)
    assert ablate.choose_best(rows, "speed") == ["mqa", "qk_norm"]  # mqa: at 5 s it is done, the others half way
    side_by_side = ablate.summarise(runs, {"baseline": [1.0, 1.2, 0.9], "qk_norm": [2.0, 2.0, 2.0], "mqa": [1.0]})
    assert side_by_side["qk_norm"]["ms_per_step"] == 2000 and side_by_side["qk_norm"]["paced_budget_s"] == 10
    assert side_by_side["qk_norm"]["val_loss_at_paced_time"][0] == pytest.approx(2.95)  # half way at 10 s
