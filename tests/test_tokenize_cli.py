"""`seqmodel tokenize` on a char run, and one-line errors when a run's BPE tokenizer file is
missing or corrupt (through `seqmodel sample`, in a subprocess)."""

import json

import pytest
from conftest import cli, tiny_char_recipe

from seqmodel.data.pipeline import Pipeline
from seqmodel.recipe.schema import load_recipe
from seqmodel.training.rundir import save_pipeline


def test_tokenize_a_char_run(tmp_path, corpus):
    cli("run", tiny_char_recipe(tmp_path, corpus, steps=2, eval_every=2), "--out", tmp_path / "char", "--no-progress")
    text = "The king doth speak."
    out = json.loads(cli("tokenize", tmp_path / "char", "--text", text, "--json").stdout)
    chars = json.loads((tmp_path / "char" / "tokenizers" / "text" / "chars.json").read_text())["chars"]
    assert out["pieces"] == list(text) and [chars[i] for i in out["ids"]] == list(text)
    back = json.loads(cli("tokenize", tmp_path / "char", "--ids", ",".join(map(str, out["ids"])), "--json").stdout)
    assert back == {"text": text}


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_damaged_bpe_file_is_one_line_naming_it(tmp_path, corpus, damage):
    recipe = load_recipe(tiny_char_recipe(tmp_path, corpus), ["tokenizer.kind=bpe", "tokenizer.vocab_size=300"])
    pipe = Pipeline(recipe)
    pipe.fit()
    save_pipeline(pipe, tmp_path / "run")  # what a new run writes before training
    path = tmp_path / "run" / "tokenizers" / "text" / "tokenizer.json"
    if damage == "missing":
        path.unlink()
    else:
        path.write_text(path.read_text()[:100])
    done = cli("sample", tmp_path / "run", "--max-new-tokens", "5", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and str(path) in done.stderr and damage in done.stderr
