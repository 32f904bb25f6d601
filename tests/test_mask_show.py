"""`seqmodel mask show`: the terminal grid is the mask, for patterns and for a recipe's schedule."""

from conftest import cli, tiny_char_recipe


def grid(text: str) -> list[str]:
    return [line[3:] for line in text.splitlines()[2:]]


def test_pattern_grid_matches_the_definition(tmp_path):
    out = cli("mask", "show", "prefix", "--length", "9", "--out", tmp_path / "m.png").stdout
    rows = grid(out)
    assert len(rows) == 9 and (tmp_path / "m.png").stat().st_size > 1000
    for q, row in enumerate(rows):
        for k, c in enumerate(row):
            assert (c == "#") == (k <= q or (q < 3 and k < 3))


def test_recipe_schedule_shows_each_distinct_layer_mask(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus)
    out = cli("mask", "show", recipe, "--length", "6", "--set", 'model.layer_masks=["sliding_window:2", "causal"]').stdout
    blocks = out.split("\n\n")
    assert blocks[0].startswith("sliding_window:2  (layers 0)") and blocks[1].startswith("causal  (layers 1)")
    window = grid(blocks[0])
    assert window[5] == "....##" and grid(blocks[1])[5] == "######"


def test_bad_pattern_is_one_line():
    done = cli("mask", "show", "slidng", check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown pattern 'slidng'" in done.stderr
