"""Properties of the core model: causality per mask, encoder-decoder dependence, modality
embeddings, mixed modalities, gradient flow, and KV-cache parity."""

import pytest
import torch

from seqmodel.generate import generate
from seqmodel.model.config import ModelConfig
from seqmodel.model.transformer import Transformer
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment, collate

TEXT = ModalitySpec("text", vocab_size=20)


def text_model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, heads=4, layers=2, context=64, **kw)
    return Transformer(cfg, [TEXT, ModalitySpec("img", width=6, position="2d", max_positions=(4, 4))], outputs=("text",)).eval()


def run(model, segs):
    return model(collate([segs]))[0]


def changed(a, b):
    return (a - b).abs().amax(-1) > 1e-6


@pytest.mark.parametrize("mask", ["causal", "sliding_window:4", "causal&segment"])
@pytest.mark.parametrize("j", [0, 5, 11])
def test_decoder_future_token_cannot_change_the_past(mask, j):
    model = text_model(mask=mask)
    ids = torch.randint(0, 20, (12,), generator=torch.Generator().manual_seed(j))
    other = ids.clone()
    other[j] = (other[j] + 1) % 20
    diff = changed(run(model, [Segment("text", ids=ids)]), run(model, [Segment("text", ids=other)]))
    assert not diff[:j].any()
    assert diff[j]


def test_full_encoder_change_reaches_everything():
    model = text_model(arch="encoder", mask="full")
    ids = torch.randint(0, 20, (10,))
    other = ids.clone()
    other[7] = (other[7] + 1) % 20
    assert changed(run(model, [Segment("text", ids=ids)]), run(model, [Segment("text", ids=other)])).all()


def test_prefix_tokens_see_each_other_but_not_the_suffix():
    model = text_model(mask="prefix")
    img = torch.randn(4, 6)
    pos = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    ids = torch.randint(0, 20, (5,))
    base = run(model, [Segment("img", values=img, positions=pos), Segment("text", ids=ids)])
    img2 = img.clone()
    img2[3] += 1.0  # last prefix token: every prefix token sees it
    diff = changed(base, run(model, [Segment("img", values=img2, positions=pos), Segment("text", ids=ids)]))
    assert diff.all()
    ids2 = ids.clone()
    ids2[2] = (ids2[2] + 1) % 20
    diff = changed(base, run(model, [Segment("img", values=img, positions=pos), Segment("text", ids=ids2)]))
    assert not diff[:4 + 2].any() and diff[4 + 2 :].all()


def test_encoder_decoder_dependence():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="encoder_decoder", d_model=32, heads=4, layers=2, context=32)
    model = Transformer(cfg, [TEXT, ModalitySpec("img", width=6)], outputs=("text",)).eval()
    ctx = collate([[Segment("img", values=torch.randn(5, 6))]])
    ctx2 = collate([[Segment("img", values=torch.randn(5, 6))]])
    dec = collate([[Segment("text", ids=torch.randint(0, 20, (7,)))]])
    dec2 = collate([[Segment("text", ids=torch.randint(0, 20, (7,)))]])
    assert changed(model(dec, ctx)[0], model(dec, ctx2)[0]).all()
    enc1, _ = model.encode(ctx)
    model(dec2, ctx)
    enc2, _ = model.encode(ctx)
    assert torch.equal(enc1, enc2)  # the encoder has no path from decoder tokens
    assert model.encoder is not model.decoder and type(model.encoder) is type(model.decoder)


def test_same_ids_in_two_modalities_differ_and_kinds_share_a_sequence():
    torch.manual_seed(0)
    specs = [ModalitySpec("a", vocab_size=10), ModalitySpec("b", vocab_size=10), ModalitySpec("c", width=3)]
    model = Transformer(ModelConfig(d_model=16, heads=2, layers=1), specs)
    with torch.no_grad():
        model.adapters["b"].weight.copy_(model.adapters["a"].weight)  # identical tables
        model.positions["b"].tables[0].weight.copy_(model.positions["a"].tables[0].weight)
        model.modality_emb.weight.normal_()  # zero at initialisation; as if learned
    ids = torch.arange(5)
    ts = collate([[Segment("a", ids=ids), Segment("b", ids=ids), Segment("c", values=torch.randn(2, 3))]])
    x = model.embed(ts)[0]
    assert (x[:5] - x[5:10]).abs().amax(-1).min() > 1e-4
    torch.testing.assert_close(x[:5] - x[5:10], (model.modality_emb.weight[0] - model.modality_emb.weight[1]).expand(5, 16))
    assert x.shape == (12, 16)


def test_gradients_reach_every_parameter_on_a_mixed_batch():
    torch.manual_seed(0)
    specs = [ModalitySpec("text", vocab_size=11), ModalitySpec("img", width=4, position="2d", max_positions=(3, 3)),
             ModalitySpec("t", width=2, position="rotary")]
    cfg = ModelConfig(arch="encoder_decoder", d_model=16, heads=2, layers=2, mask="causal", dropout=0.1)
    model = Transformer(cfg, specs, outputs=("text", "img"))
    ctx = collate([[Segment("t", values=torch.randn(3, 2))], [Segment("t", values=torch.randn(2, 2))]])
    pos = torch.tensor([[0, 0], [1, 2]])
    dec = collate([[Segment("img", values=torch.randn(2, 4), positions=pos), Segment("text", ids=torch.tensor([1, 2, 3]))],
                   [Segment("img", values=torch.randn(2, 4), positions=pos), Segment("text", ids=torch.tensor([4]))]])
    h = model(dec, ctx)
    loss = model.output("text", h, dec).logsumexp(-1).mean() + model.output("img", h, dec).pow(2).mean()
    ctx_rot = collate([[Segment("t", values=torch.randn(3, 2))]])
    loss = loss + model.encode(ctx_rot)[0].mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("mask", ["causal", "sliding_window:5", "prefix"])
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_cache_parity_decoder(mask, position):
    torch.manual_seed(3)
    specs = [ModalitySpec("text", vocab_size=20, position=position, max_positions=(24,)), ModalitySpec("img", width=6)]
    model = Transformer(ModelConfig(d_model=32, heads=4, layers=3, context=24, mask=mask), specs, outputs=("text",)).eval()
    prefix = [Segment("img", values=torch.randn(3, 6)), Segment("text", ids=torch.tensor([1, 2, 3]))]
    logs = {True: [], False: []}
    out = {c: generate(model, prefix, 40, lambda lg: int(lg.argmax()), use_cache=c, on_logits=logs[c].append) for c in (True, False)}
    assert out[True] == out[False]
    assert len(out[True]) == 40  # past the context (24) and past the sliding window
    torch.testing.assert_close(torch.stack(logs[True]), torch.stack(logs[False]), atol=1e-5, rtol=0)


def test_cache_parity_encoder_decoder():
    torch.manual_seed(4)
    specs = [ModalitySpec("text", vocab_size=20, max_positions=(16,)), ModalitySpec("img", width=6)]
    cfg = ModelConfig(arch="encoder_decoder", d_model=32, heads=4, layers=2, context=16)
    model = Transformer(cfg, specs, outputs=("text",)).eval()
    context = [Segment("img", values=torch.randn(7, 6))]
    logs = {True: [], False: []}
    out = {c: generate(model, [Segment("text", ids=torch.tensor([0]))], 30, lambda lg: int(lg.argmax()),
                       context=context, use_cache=c, on_logits=logs[c].append) for c in (True, False)}
    assert out[True] == out[False]
    torch.testing.assert_close(torch.stack(logs[True]), torch.stack(logs[False]), atol=1e-5, rtol=0)
