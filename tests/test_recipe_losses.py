"""Every shipped recipe, shrunk to a few steps, gives the losses recorded before the task-layer
refactor (tests/data/recipe_losses.json): batches, tokenization and loss are unchanged.

Regenerate the record (only when a change is meant to move these numbers, and say so in the
commit): ``python tests/test_recipe_losses.py --record``.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "tests" / "data" / "recipe_losses.json"
COMMON = ["train.steps=3", "train.log_every=1", "train.eval_every=3", "train.eval_batches=1", "train.checkpoint_every=3",
          "train.threads=1", "train.warmup=1", "sample.num_samples=0"]
RECIPES = {
    "recipes/char_lm.toml": ["train.batch_size=4", "model.mlp=gelu", "train.precision=fp32"],  # recorded before swiglu/auto
    "recipes/char_lm_baby.toml": [],
    "recipes/bpe_lm.toml": ["tokenizer.vocab_size=300"],
    "recipes/vit_patches.toml": ["train.batch_size=16", "task.label_smoothing=0.0"],  # recorded before the recipe took 0.1
    "recipes/caption_digits.toml": ["data.train_pairs=200", "data.val_pairs=20", "data.test_pairs=20", "train.batch_size=8"],
    "recipes/caption_digits.toml#encdec": ["data.train_pairs=200", "data.val_pairs=20", "data.test_pairs=20",
                                           "train.batch_size=8", 'model.arch="encoder_decoder"', 'model.mask="causal"'],
    "recipes/decision_cartpole.toml": ["data.n_episodes=20", "task.report_targets=[]", "task.episodes=1", "train.batch_size=8"],
    "recipes/decision_cartpole_bc.toml": ["data.n_episodes=20", "task.report_targets=[]", "task.episodes=1", "train.batch_size=8"],
    "recipes/speech_digits.toml": ["data.n_utterances=60", "train.batch_size=8", "data.progress=false"],
    "plugins/seqmodel-kmer/recipes/kmer_lm.toml": [],
}


def losses(name: str, out: Path) -> dict:
    import seqmodel

    path = REPO / name.split("#")[0]
    seqmodel.run(path, COMMON + RECIPES[name], out=out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"train_loss": [r["train_loss"] for r in rows if "train_loss" in r],
            "val_loss": [r["val_loss"] for r in rows if "val_loss" in r]}


def needs(name: str) -> None:
    if "speech" in name and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    if "kmer" in name:
        pytest.importorskip("seqmodel_kmer")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_losses_unchanged(name, tmp_path):
    needs(name)
    recorded = json.loads(RECORD.read_text())[name]
    got = losses(name, tmp_path / "run")
    for key in ("train_loss", "val_loss"):
        assert got[key] == pytest.approx(recorded[key], rel=1e-5, abs=1e-6), key


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    record = {}
    for name in sorted(RECIPES):
        with tempfile.TemporaryDirectory() as tmp:
            record[name] = losses(name, Path(tmp) / "run")
            print(name, record[name], file=sys.stderr)
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
