"""The seq2seq task: edit distance, BOS/EOS wrapping, teacher forcing, cache parity of decoding,
the speech recipe, and a tiny end-to-end CLI run (run, eval --json, predict, bad audio files)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cli
from hypothesis import given
from hypothesis import strategies as st
from seqmodel_plugins.tasks.seq2seq import edit_distance

from seqmodel.api import load
from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError
from seqmodel.generate import generate
from seqmodel.recipe.schema import load_recipe
from seqmodel.segments import Segment
from seqmodel.task import Slice

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "speech_digits.toml"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
TINY = ["model.d_model=32", "model.heads=2", "model.layers=1", "model.encoder_layers=1", "model.context=64",
        "tokenizers.audio.frames=8", "data.n_utterances=48", "data.progress=false", "train.batch_size=8",
        "train.threads=1"]


def _naive_distance(a: str, b: str) -> int:
    if not a or not b:
        return len(a) + len(b)
    return min(_naive_distance(a[1:], b) + 1, _naive_distance(a, b[1:]) + 1,
               _naive_distance(a[1:], b[1:]) + (a[0] != b[0]))


@given(st.text("0123", max_size=6), st.text("0123", max_size=6))
def test_edit_distance_matches_naive_recursion(a: str, b: str) -> None:
    assert edit_distance(a, b) == _naive_distance(a, b) == edit_distance(b, a)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (and stalls on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def pipe(cache: Path) -> Pipeline:
    torch.manual_seed(0)
    p = Pipeline(load_recipe(RECIPE, [*TINY, f"data.cache_dir={json.dumps(str(cache))}"]))
    p.fit()
    return p


def test_recipe_parses_and_builds_the_full_model(cache: Path) -> None:
    p = Pipeline(load_recipe(RECIPE, ["data.n_utterances=48", "data.progress=false",
                                      f"data.cache_dir={json.dumps(str(cache))}"]))
    p.fit()
    assert p.recipe.model.arch == "encoder_decoder"
    assert 1.0e6 < p.module.core.num_parameters() < 2.0e6
    longest = max(len(p.tokenizers["audio"].encode(ex["audio"])) for ex in p.examples("train"))
    assert longest <= p.recipe.model.context


def test_specials_extend_the_model_vocabulary_not_the_tokenizer(pipe: Pipeline) -> None:
    task, tok = pipe.task, pipe.tokenizers["text"]
    V = tok.spec().vocab_size
    assert (task.bos, task.eos) == (V, V + 1)
    assert pipe.module.core.specs["text"].vocab_size == V + 2 and pipe.module.core.heads["text"].out_features == V + 2
    ids = tok.encode("305").ids
    assert task.decode(torch.cat([torch.tensor([task.bos]), ids, torch.tensor([task.eos])])) == "305"
    task.setup(pipe.context())  # setting up twice must not grow the vocabulary twice
    assert tok.spec().vocab_size == V and task.model_specs({"text": tok.spec()})[0].vocab_size == V + 2


def test_teacher_forcing_batch_and_gradients(pipe: Pipeline) -> None:
    task = pipe.task
    batch = task.batches("train", True).batch(Slice(0, 0, 0, 4, 4))
    dec = batch.inputs["text"]
    for b in range(4):
        n = int(dec.valid[b].sum())
        ids, targets = dec.ids[b, :n], dec.targets[b, :n]
        assert ids[0] == task.bos and targets[-1] == task.eos and torch.equal(ids[1:], targets[:-1])
        assert bool((ids[1:] < task.bos).all())
    module = pipe.module.train()
    loss, stats = module(batch)
    loss.backward()
    assert torch.isfinite(loss) and stats["tokens"] == int(batch.context.valid.sum() + batch.valid.sum())
    assert module.core.adapters["audio"].weight.grad.abs().sum() > 0  # the decoder reads the encoder
    module.zero_grad(set_to_none=True)


def test_training_loss_is_smoothed_and_split_loss_is_plain_cross_entropy(pipe: Pipeline) -> None:
    task = pipe.task
    items = task.items("val")[:6]
    batch = task.collate(items)
    core = pipe.module.core.eval()
    with torch.no_grad():
        hidden = core(batch, context=batch.context)
        logits = core.output("text", hidden, batch).float()
    inp = batch.inputs["text"]
    keep = inp.valid & (inp.targets != -100)
    logp = logits.log_softmax(-1)[keep]
    targets = inp.targets[keep]
    plain = float(-logp.gather(1, targets[:, None]).mean())
    smoothing = 0.2
    smoothed = float(((1 - smoothing) * -logp.gather(1, targets[:, None])[:, 0] - smoothing * logp.mean(-1)).mean())
    before = task.config.label_smoothing
    try:
        task.config.label_smoothing = smoothing
        assert task.split_loss(pipe.module.eval(), items) == pytest.approx(plain, rel=1e-5)
        with torch.no_grad():
            loss, _ = task.loss(core, None, batch)
        assert float(loss) == pytest.approx(smoothed, rel=1e-5) and smoothed > plain
    finally:
        task.config.label_smoothing = before


def test_decoding_with_and_without_cache_is_identical(pipe: Pipeline) -> None:
    task, core = pipe.task, pipe.module.core.eval()
    for values, _ in task.items("val")[:3]:
        segments = task.encoder_segments(values)
        model = pipe.module.eval()
        assert task.transcribe(model, segments, use_cache=True) == task.transcribe(model, segments, use_cache=False)
        logits = {True: [], False: []}
        start = [Segment("text", ids=torch.tensor([task.bos]))]
        outs = {c: generate(core, start, 12, lambda x: int(x.argmax()), context=segments, use_cache=c,
                            on_logits=logits[c].append) for c in (True, False)}
        assert outs[True] == outs[False] and len(outs[True]) == 12
        torch.testing.assert_close(torch.stack(logits[True]), torch.stack(logits[False]), atol=1e-5, rtol=1e-5)
    cfg = pipe.recipe.sample
    sampled = [task.transcribe(pipe.module.eval(), segments, cfg, use_cache=c, generator=torch.Generator().manual_seed(5))
               for c in (True, False)]
    assert sampled[0] == sampled[1]


def _espeak_wav(path: Path, words: str) -> Path:
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), words], check=True, capture_output=True)
    return path


@needs_espeak
def test_run_eval_predict_end_to_end(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "run"
    sets = [f"--set={s}" for s in [*TINY, "train.steps=12", "train.eval_every=6", "train.eval_batches=1",
                                   "train.warmup=2", "sample.num_samples=1", "task.report_examples=2",
                                   f"data.cache_dir={json.dumps(str(cache))}"]]
    cli("run", RECIPE, "--out", out, "--no-progress", *sets)
    assert (out / "val_transcriptions.png").is_file() and (out / "samples.txt").is_file()
    metrics = json.loads(cli("eval", out, "--split", "test", "--json", "--limit", "1").stdout)
    assert set(metrics) >= {"exact_match", "cer", "loss"} and 0 <= metrics["exact_match"] <= 1 and metrics["cer"] >= 0
    wav = _espeak_wav(tmp_path / "two nine.wav", "two nine")
    tone = tmp_path / "tone.wav"
    sf.write(tone, 0.1 * np.sin(np.arange(40000) / 3.0), 44100)  # another sample rate
    rows = json.loads(cli("predict", out, wav, tone, "--json").stdout)
    assert [r["file"] for r in rows] == [str(wav), str(tone)] and set(rows[0]["text"]) <= set("0123456789")
    assert cli("predict", out, wav).stdout.strip() == f"{wav}  {rows[0]['text']}"
    bad = _bad_files(tmp_path)
    for name in ("broken.mp3", "empty.wav"):  # libmpg123 would print its own warnings around ours
        done = cli("predict", out, wav, bad[name], check=False)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and str(bad[name]) in done.stderr, done.stderr
    run = load(out)
    for name in ("corrupt.wav", "clip.m4a"):
        with pytest.raises(UserError, match=str(bad[name])) as err:
            run.predict([str(wav), str(bad[name])])
        assert "\n" not in str(err.value)


def _bad_files(tmp: Path) -> dict[str, Path]:
    contents = {"corrupt.wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40), "empty.wav": b"",
                "clip.m4a": b"\x00\x00\x00\x20ftypM4A " + bytes(300), "broken.mp3": b"ID3\x03" + bytes(300)}
    for name, data in contents.items():
        (tmp / name).write_bytes(data)
    return {name: tmp / name for name in contents}


@pytest.mark.slow
@needs_espeak
def test_speech_recipe_transcribes_unseen_voices(tmp_path: Path) -> None:
    """The shipped recipe, end to end (about 15 minutes on 2 cores): held-out voices and a
    recording made outside the data set (unseen voice, speed and pitch)."""
    out = tmp_path / "speech"
    cli("run", RECIPE, "--out", out, "--no-progress", "--set=train.threads=2")
    metrics = json.loads(cli("eval", out, "--split", "test", "--json").stdout)
    assert metrics["exact_match"] >= 0.97 and metrics["cer"] <= 0.01, metrics
    wav = tmp_path / "outside.wav"
    words = "eight zero four one seven"
    subprocess.run(["espeak-ng", "-v", "en-us+m2", "-s", "175", "-p", "75", "-w", str(wav), words], check=True)
    assert json.loads(cli("predict", out, wav, "--json").stdout)[0]["text"] == "80417"
