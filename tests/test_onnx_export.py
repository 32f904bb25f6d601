"""`seqmodel export RUN --format onnx`: onnxruntime computes what PyTorch computes, for a decoder,
an encoder (vit_patches) and encoder-decoders (speech_digits, caption_digits' cross-attention
design), on batches of other sizes than the one traced."""

import json
import shutil
from pathlib import Path

import numpy as np
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


# -- building the inputs from a file, without seqmodel ---------------------------------------------
DIGITS_CLS = ('[model]\narch = "encoder"\nlayers = 1\nd_model = 16\nheads = 2\nmask = "full"\ncontext = 17\n'
              '[train]\nsteps = 30\nbatch_size = 16\neval_every = 30\neval_batches = 1\nthreads = 1\nlr = 0.01\n'
              '[data]\nsource = "digits"\n[tokenizer]\nkind = "patches"\nfield = "image"\nmodality = "image"\n'
              'size = 16\npatch = 4\n[task]\nkind = "classify"\npool = "cls"\n')


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """A tiny digit classifier with a class token (a constant segment before the image's) and its export."""
    tmp = tmp_path_factory.mktemp("digits_onnx")
    (tmp / "digits.toml").write_text(DIGITS_CLS)
    cli("run", tmp / "digits.toml", "--out", tmp / "run", "--no-progress")
    cli("export", tmp / "run", "--format", "onnx", "--out", tmp / "onnx")
    return tmp / "run", tmp / "onnx"


def pngs(folder: Path) -> dict[str, Path]:
    """A colour non-square image (crop, grey from colour, resize), a transparent one (alpha over
    white), a palette one and a small grey one (resize up)."""
    from PIL import Image, ImageDraw

    made = {}
    for name, mode, size in (("rgb", "RGB", (37, 29)), ("rgba", "RGBA", (20, 20)), ("grey", "L", (8, 8))):
        image = Image.new(mode, size, (10, 20, 30, 0)[: len(mode)] if mode != "L" else 0)
        draw = ImageDraw.Draw(image)
        draw.ellipse([2, 3, size[0] - 4, size[1] - 2], outline=(250, 200, 90, 255)[: len(mode)] if mode != "L" else 230, width=2)
        draw.line([3, size[1] - 3, size[0] - 3, 2], fill=(90, 250, 160, 200)[: len(mode)] if mode != "L" else 160, width=1)
        made[name] = folder / f"{name}.png"
        image.save(made[name])
    made["palette"] = folder / "palette.png"
    Image.open(made["rgb"]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(made["palette"])
    return made


def test_signature_json_says_how_to_build_an_image_input(digits_export):
    run_dir, out = digits_export
    sig = json.loads((out / "signature.json").read_text())
    run = seqmodel.load(run_dir, device="cpu")
    tok = run.pipeline.tokenizers["image"]
    pre = sig["preprocessing"]["image"]
    assert (pre["size"], pre["patch"], pre["channels"], pre["resample"], pre["positions"]) == (16, 4, 1, "bicubic", "row_column")
    assert pre["mean"] == tok.mean.flatten().tolist() and pre["std"] == tok.std.flatten().tolist()
    assert sig["example"] == [{"modality": "cls", "segment": 0, "doc": 0, "constant": {"ids": [0], "positions": [[0]]}},
                              {"modality": "image", "segment": 1, "doc": 1, "from": "input"}]
    logits = next(o for o in sig["outputs"] if o["name"] == "logits")
    assert logits["classes"] == run.task.label_names and len(logits["classes"]) == logits["shape"][1] == 10


def test_the_documented_onnx_program_gives_what_predict_gives(tmp_path, digits_export):
    """docs/export.md's numpy + Pillow + onnxruntime program, run as written, against `seqmodel
    predict` and the run's own probabilities, to 1e-5; a naive preprocessing (8-bit grey and
    resize in Pillow) is visibly off, so the comparison can tell."""
    import ast
    import subprocess
    import sys

    from doc_snippets import snippet
    from PIL import Image

    run_dir, out = digits_export
    code = snippet("export.md", "onnx_image")
    modules = {n.split(".")[0] for node in ast.walk(ast.parse(code)) if isinstance(node, (ast.Import, ast.ImportFrom))
               for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])}
    assert modules == {"json", "sys", "numpy", "onnxruntime", "PIL"}
    program = tmp_path / "classify.py"
    program.write_text(code)
    images = pngs(tmp_path)
    done = subprocess.run([sys.executable, "-I", str(program), str(out), str(images["rgb"])], capture_output=True, text=True,
                          cwd=tmp_path, check=True)
    first = json.loads(done.stdout)
    scope = {"__name__": "doc"}
    exec(code, scope)  # noqa: S102 -- the documentation's own code
    run = seqmodel.load(run_dir, device="cpu")
    tok = run.pipeline.tokenizers["image"]
    predicted = json.loads(cli("predict", run_dir, *images.values(), "--json").stdout)
    for (name, path), row in zip(images.items(), predicted):
        ours = scope["classify"](str(out), str(path)) if name != "rgb" else first
        expected = run.task.scores(run.model, [tok.read_file(path)]).softmax(-1)[0]
        assert ours["label"] == row["label"] and abs(ours["prob"] - row["prob"]) < 1e-5, name
        assert np.abs(np.array(ours["probs"]) - expected.numpy()).max() < 1e-5, name
    pre = json.loads((out / "signature.json").read_text())["preprocessing"]["image"]
    naive = np.asarray(Image.open(images["rgb"]).convert("L").resize((16, 16), Image.Resampling.BICUBIC), np.float32) / 255
    values = (naive - np.float32(pre["mean"][0])) / np.float32(pre["std"][0])
    patches = values.reshape(1, 4, 4, 4, 4).transpose(1, 3, 2, 4, 0).reshape(16, 16)
    feed = scope["inputs"](json.loads((out / "signature.json").read_text()), {"image": (patches, np.stack(np.divmod(np.arange(16), 4), 1))})
    (logits,) = ort.InferenceSession(str(out / "model.onnx")).run(["logits"], feed)
    naive_probs = torch.from_numpy(logits[0]).softmax(-1).numpy()
    assert np.abs(naive_probs - np.array(first["probs"])).max() > 1e-4
