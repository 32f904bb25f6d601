"""benchmarks/step_time.py: each variant is built from the recipe with its own overrides and timed
in turn; the table and the JSON name every variant with its overrides."""

import json
import sys

from conftest import REPO, tiny_char_recipe

sys.path.insert(0, str(REPO / "benchmarks"))
import step_time


def test_variants_get_their_own_overrides_and_a_row_each(tmp_path, corpus, capsys):
    recipe = tiny_char_recipe(tmp_path, corpus)
    out = tmp_path / "t.json"
    result = step_time.main([str(recipe), "--variant", "gelu=model.mlp=gelu", "--variant", "swiglu=model.mlp=swiglu,model.layers=1",
                             "--reps", "2", "--warmup", "1", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    rows = result["rows"]
    assert list(rows) == ["gelu", "swiglu"]
    assert rows["swiglu"]["overrides"] == ["model.mlp=swiglu", "model.layers=1"]
    assert all(len(r["all_ms"]) == 2 and r["ms_per_step"] > 0 for r in rows.values())
    table = capsys.readouterr().out
    assert "| gelu | model.mlp=gelu |" in table and "| swiglu | model.mlp=swiglu model.layers=1 |" in table
