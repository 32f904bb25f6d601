"""`seqmodel export RUN --format onnx`: onnxruntime computes what PyTorch computes, for a decoder,
an encoder (vit_patches) and encoder-decoders (speech_digits, caption_digits' cross-attention
design), on batches of other sizes than the one traced."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import cli, tiny_char_recipe

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import seqmodel  # noqa: E402
from seqmodel.interop.onnx import Graph, flatten  # noqa: E402
from seqmodel.task import Slice  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL = ["train.steps=2", "train.eval_every=2", "train.eval_batches=1", "train.threads=1", "train.warmup=1",
         "sample.num_samples=0", "model.layers=2", "model.d_model=32", "model.heads=2", "model.dropout=0.0"]
RECIPES = {
    "vit_patches": ["train.batch_size=8"],
    "speech_digits": ["data.n_utterances=40", "train.batch_size=4", "data.progress=false", "model.encoder_layers=1"],
    "caption_digits": ["data.train_pairs=40", "data.val_pairs=10", "data.test_pairs=10", "train.batch_size=4",
                       'model.arch="encoder_decoder"', 'model.mask="causal"'],
}


def check(run_dir: Path, out: Path) -> dict:
    """Export, then compare onnxruntime with PyTorch on validation batches the trace never saw."""
    done = cli("export", run_dir, "--format", "onnx", "--out", out)
    assert "onnxruntime reads it back" in done.stdout
    signature = json.loads((out / "signature.json").read_text())
    session = ort.InferenceSession(str(out / "model.onnx"))
    run = seqmodel.load(run_dir, device="cpu")
    stream = run.task.batches("val", False)
    batch = stream.batch(Slice(2, 0, 0, 5, 5))
    graph = Graph(run.model, run.task, batch).eval()
    feed = flatten(batch)
    assert [i["name"] for i in signature["inputs"]] == list(feed) == [i.name for i in session.get_inputs()]
    names = [o["name"] for o in signature["outputs"]]
    got = session.run(names, {k: v.numpy() for k, v in feed.items()})
    with torch.no_grad():
        expected = graph(*feed.values())
    for name, g, e in zip(names, got, expected):
        assert g.shape == tuple(e.shape), name
        assert (torch.from_numpy(g) - e).abs().max() < 1e-4, name
    return signature


def test_onnx_decoder(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=3)
    cli("run", recipe, "--out", tmp_path / "lm", "--no-progress")
    sig = check(tmp_path / "lm", tmp_path / "onnx")
    assert [o["name"] for o in sig["outputs"]] == ["hidden", "text.logits"]
    assert sig["inputs"][0] == {"name": "text.ids", "dtype": "int64", "shape": ["batch", "text_tokens"]}
    assert sig["modalities"] == ["text"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_onnx_encoder_and_encoder_decoder(tmp_path, name):
    if name == "speech_digits" and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    run_dir = tmp_path / name
    overrides = [a for o in SMALL + RECIPES[name] for a in ("--set", o)]
    cli("run", REPO / "recipes" / f"{name}.toml", "--out", run_dir, "--no-progress", *overrides)
    sig = check(run_dir, tmp_path / "onnx")
    outputs = [o["name"] for o in sig["outputs"]]
    if name == "vit_patches":
        assert outputs == ["hidden", "logits"]
    else:
        assert outputs == ["hidden", "text.logits"] and any(i["name"].startswith("context.") for i in sig["inputs"])


def test_onnx_of_a_lora_run_is_the_adapted_model(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=3)
    cli("run", recipe, "--out", tmp_path / "base", "--no-progress")
    cli("run", recipe, "--out", tmp_path / "lora", "--no-progress", "--set", f'train.init_from="{tmp_path / "base"}"',
        "--set", "train.lora={rank=4}")
    check(tmp_path / "lora", tmp_path / "onnx")
