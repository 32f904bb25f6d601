"""Image-prefix captioning (issue: one stream, several modalities): both designs train and
decode through the same seq2seq task; a missing field is a one-line error."""

import json

import pytest
from conftest import REPO, cli

TINY = ["--set", "train.steps=4", "--set", "data.train_pairs=64", "--set", "data.val_pairs=8", "--set", "data.test_pairs=8",
        "--set", "train.eval_every=4", "--set", "train.eval_batches=1", "--set", "train.batch_size=8",
        "--set", "model.layers=1", "--set", "model.d_model=32", "--set", "sample.num_samples=1"]


@pytest.mark.parametrize("arch,mask", [("decoder", "prefix"), ("encoder_decoder", "causal")])
def test_both_designs_train_and_caption(tmp_path, arch, mask):
    out = tmp_path / arch
    cli("run", REPO / "recipes" / "caption_digits.toml", "--out", out, "--no-progress", *TINY,
        "--set", f'model.arch="{arch}"', "--set", f'model.mask="{mask}"')
    metrics = json.loads(cli("eval", out, "--split", "test", "--json").stdout)
    assert metrics["examples"] == 8 and 0 <= metrics["exact_match"] <= 1 and metrics["cer"] >= 0
    from PIL import Image

    Image.new("L", (16, 16)).save(tmp_path / "blank.png")
    rows = json.loads(cli("predict", out, tmp_path / "blank.png", "--json").stdout)
    assert rows[0]["file"].endswith("blank.png") and isinstance(rows[0]["text"], str)
    samples = (out / "samples.txt").read_text()
    assert "input: Image (16, 16)" in samples and "<PIL" not in samples  # an image by its size, not its repr


def test_the_report_draws_images_as_images(tmp_path):
    import numpy as np
    from PIL import Image

    out = tmp_path / "run"
    cli("run", REPO / "recipes" / "caption_digits.toml", "--out", out, "--no-progress", *TINY,
        "--set", "task.report_examples=2")
    picture = np.asarray(Image.open(out / "val_transcriptions.png"))
    assert picture.shape[0] > picture.shape[1] / 3  # two panels stacked, not two strips of a transposed spectrogram


def test_modality_embeddings_can_be_switched_off():
    done = cli("check", REPO / "recipes" / "caption_digits.toml", "--set", "model.modality_embedding=false",
               "--set", "data.train_pairs=16")
    assert "ok" in done.stdout


def test_a_field_the_source_lacks_is_named_with_the_fields_that_exist():
    done = cli("check", REPO / "recipes" / "caption_digits.toml", "--set", 'tokenizers.text.field="caption"', check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no field 'caption'" in done.stderr and "image, text, label" in done.stderr
