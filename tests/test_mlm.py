"""The masked-token task: what is hidden and how, the loss on hidden tokens only, bidirectional
reading, filling in blanks, and a tiny run through the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import cli, one_line_error, tiny_char_recipe

from seqmodel.data.pipeline import Pipeline
from seqmodel.recipe.schema import load_recipe
from seqmodel.segments import dense_set
from seqmodel.task import Slice

ENCODER = ['model.arch="encoder"', 'model.mask="full"', 'task.kind="mlm"']


def mlm_recipe(tmp, corpus, **train):
    return tiny_char_recipe(tmp, corpus, **train)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, corpus):
    p = Pipeline(load_recipe(mlm_recipe(tmp_path_factory.mktemp("mlm"), corpus), ENCODER))
    p.fit()
    return p


def test_hiding_follows_bert_proportions_and_keeps_the_rest(pipe):
    task = pipe.task
    ids = torch.randint(task.mask_id, (400, 32), generator=torch.Generator().manual_seed(0))
    ts = task.hide(dense_set("text", ids=ids), torch.Generator().manual_seed(1))
    inp, targets = ts.inputs["text"].ids, ts.inputs["text"].targets
    hidden = targets != -100
    assert bool(hidden.any(1).all())  # at least one hidden token per window
    assert torch.equal(targets[hidden], ids[hidden]) and torch.equal(inp[~hidden], ids[~hidden])
    n = int(hidden.sum())
    masked = int((inp[hidden] == task.mask_id).sum())
    kept = int((inp[hidden] == ids[hidden]).sum())
    assert abs(n / ids.numel() - 0.15) < 0.01  # 12,800 tokens: 0.15 +- 3 standard errors
    assert abs(masked / n - 0.8) < 0.03 and abs(kept / n - 0.1 - 0.9 / task.mask_id) < 0.03
    assert int((inp == task.mask_id).sum()) == masked  # [MASK] appears nowhere else


def test_batches_are_a_pure_function_of_the_slice(pipe, corpus, tmp_path):
    other = Pipeline(load_recipe(mlm_recipe(tmp_path, corpus), ENCODER))
    other.fit()
    a, b = pipe.task.batches("train", True), other.task.batches("train", True)
    for where in (Slice(3, 0, 0, 4, 8), Slice(3, 0, 1, 4, 8), Slice(4, 1, 0, 4, 8, 2)):
        x, y = a.batch(where).inputs["text"], b.batch(where).inputs["text"]
        assert torch.equal(x.ids, y.ids) and torch.equal(x.targets, y.targets)
    first, second = a.batch(Slice(3, 0, 0, 4, 8)).inputs["text"], a.batch(Slice(3, 0, 1, 4, 8)).inputs["text"]
    assert not torch.equal(first.targets, second.targets)  # ranks draw different windows and masks


def test_loss_is_cross_entropy_on_hidden_tokens_only(pipe):
    task, core = pipe.task, pipe.module.core.eval()
    ts = task.batches("val", False).batch(Slice(0, 0, 0, 4, 4))
    with torch.no_grad():
        loss, _ = task.loss(core, None, ts)
        logits = core.output("text", core(ts), ts).float()
    targets = ts.inputs["text"].targets
    naive = [-F.log_softmax(logits[b, t, : task.mask_id], -1)[targets[b, t]]
             for b in range(4) for t in range(targets.shape[1]) if targets[b, t] != -100]
    torch.testing.assert_close(loss, torch.stack(naive).mean())


def test_the_encoder_reads_both_sides(pipe):
    core, task = pipe.module.core.eval(), pipe.task
    ids = torch.randint(task.mask_id, (1, 16), generator=torch.Generator().manual_seed(2))
    later = ids.clone()
    later[0, 12:] = (later[0, 12:] + 1) % task.mask_id
    with torch.no_grad():
        a, b = (core(dense_set("text", ids=x))[0, 4] for x in (ids, later))
    assert not torch.allclose(a, b)  # position 4 sees positions 12..15


def test_fill_keeps_the_text_and_fills_every_blank(pipe):
    model, task = pipe.module.eval(), pipe.task
    text = "The k_ng doth _peak"
    filled = task.fill(model, text)
    assert len(filled) == len(text) and all(a == b for a, b in zip(text, filled) if a != "_")
    pieces = text.split("_")
    ids = torch.cat([torch.cat([task.ctx.encode("text", p, stream=True).ids, torch.tensor([task.mask_id])]) for p in pieces[:-1]]
                    + [task.ctx.encode("text", pieces[-1], stream=True).ids])
    with torch.no_grad():
        logits = model.core.output("text", model.core(dense_set("text", ids=ids[None])), dense_set("text", ids=ids[None]))[0]
    best = logits[:, : task.mask_id].argmax(-1)  # the most likely real character, never [MASK]
    assert [filled[i] for i in range(len(text)) if text[i] == "_"] == [task.tok.piece(int(best[i])) for i in range(len(text)) if text[i] == "_"]


def test_mlm_needs_an_encoder(tmp_path, corpus):
    done = cli("check", mlm_recipe(tmp_path, corpus), "--set", 'task.kind="mlm"', check=False)
    assert "the mlm task reads both sides of a token: it needs an \"encoder\"" in one_line_error(done)


def test_tiny_run_eval_sample_and_predict(tmp_path, corpus):
    recipe = mlm_recipe(tmp_path, corpus, steps=40, lr=0.01)
    out = tmp_path / "run"
    cli("run", recipe, "--out", out, "--no-progress", *(f"--set={s}" for s in ENCODER))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] < rows[0]["train_loss"] - 0.5  # from ln(52) ~ 3.95
    metrics = json.loads(cli("eval", out, "--json").stdout)
    assert 0.1 < metrics["accuracy"] <= 1 and metrics["masked_tokens"] > 100 and metrics["loss"] < 3.5
    filled = cli("sample", out, "--prompt", "Th_ king").stdout.rstrip("\n")
    assert len(filled) == 8 and filled.startswith("Th") and filled.endswith(" king")
    blanks = tmp_path / "blanks.txt"
    blanks.write_text("What l_ve")
    assert json.loads(cli("predict", out, blanks, "--json").stdout)[0]["text"].startswith("What l")
    assert "no blank to fill in" in one_line_error(cli("sample", out, "--prompt", "no blanks here", check=False))
