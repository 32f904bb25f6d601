"""Every built-in mask pattern, through the real attention layer, against a naive float64
reference whose mask is built by explicit loops over (query, key) pairs."""

import math

import pytest
import torch

from seqmodel.masks import parse_mask
from seqmodel.model.config import ModelConfig
from seqmodel.model.transformer import Attention, Plan, Transformer, make_plan
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment, collate

# The independent definitions: (qi, ki, q segment, k segment, q modality, k modality) -> bool
REFERENCE = {
    "full": lambda qi, ki, qs, ks, qm, km: True,
    "causal": lambda qi, ki, qs, ks, qm, km: ki <= qi,
    "sliding_window:3": lambda qi, ki, qs, ks, qm, km: ki <= qi and qi - ki < 3,
    "local:2": lambda qi, ki, qs, ks, qm, km: abs(qi - ki) <= 2,
    "prefix": lambda qi, ki, qs, ks, qm, km: ki <= qi or (qs == 0 and ks == 0),
    "segment": lambda qi, ki, qs, ks, qm, km: qs == ks,
    "modality:b>a": lambda qi, ki, qs, ks, qm, km: qm != "b" or km == "a",
    "causal&segment": lambda qi, ki, qs, ks, qm, km: ki <= qi and qs == ks,
    "sliding_window:2|prefix": lambda qi, ki, qs, ks, qm, km: (ki <= qi and qi - ki < 2) or ki <= qi or (qs == 0 and ks == 0),
    "(local:1|modality:a>a)&causal": lambda qi, ki, qs, ks, qm, km: (abs(qi - ki) <= 1 or qm != "a" or km == "a") and ki <= qi,
}


def naive_attention(q, k, v, allowed):
    """q (B,H,Lq,D), allowed (B,Lq,Lk) -- explicit masked softmax in float64."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", torch.softmax(scores, -1), v)


def mixed_batch():
    """Two examples of different lengths, three segments each (a, b, a), right-padded."""
    g = torch.Generator().manual_seed(0)
    exs = []
    for lens in [(3, 4, 2), (2, 2, 1)]:
        exs.append([
            Segment("a", ids=torch.randint(0, 9, (lens[0],), generator=g)),
            Segment("b", values=torch.randn(lens[1], 5, generator=g)),
            Segment("a", ids=torch.randint(0, 9, (lens[2],), generator=g)),
        ])
    return exs, collate(exs)


def reference_mask(pattern, exs, L):
    out = torch.zeros(len(exs), L, L, dtype=torch.bool)
    for b, ex in enumerate(exs):
        meta = [(si, seg.modality) for si, seg in enumerate(ex) for _ in range(len(seg))]
        for qi in range(L):
            for ki in range(len(meta)):
                if qi < len(meta):
                    out[b, qi, ki] = REFERENCE[pattern](qi, ki, meta[qi][0], meta[ki][0], meta[qi][1], meta[ki][1])
    return out


@pytest.mark.parametrize("flex", [False, True], ids=["sdpa", "flex"])
@pytest.mark.parametrize("pattern", sorted(REFERENCE))
def test_self_attention_matches_naive_float64(pattern, flex):
    torch.manual_seed(0)
    exs, ts = mixed_batch()
    specs = [ModalitySpec("a", vocab_size=9), ModalitySpec("b", width=5)]
    model = Transformer(ModelConfig(d_model=16, heads=2, layers=1, mask=pattern), specs).double()
    attn: Attention = model.decoder.blocks[0].attn
    B, L = ts.shape
    x = torch.randn(B, L, 16, dtype=torch.float64)
    view = model.view(ts)
    plan = make_plan(parse_mask(pattern), view, view, ts.valid, ts.valid, flex=flex)
    with torch.set_grad_enabled(not flex):  # torch has no FlexAttention backward on CPU
        got = attn(x, plan)
    assert not got.isnan().any()

    q, k, v = attn.split(attn.qkv(x), 3)
    allowed = reference_mask(pattern, exs, L)
    want = attn.proj(naive_attention(q, k, v, allowed).transpose(1, 2).reshape(B, L, 16))
    for b, ex in enumerate(exs):
        n = sum(len(s) for s in ex)
        torch.testing.assert_close(got[b, :n], want[b, :n], atol=1e-6, rtol=0)


def test_causal_fast_path_equals_dense_mask():
    torch.manual_seed(1)
    exs, ts = mixed_batch()
    model = Transformer(ModelConfig(d_model=16, heads=2, layers=1), [ModalitySpec("a", vocab_size=9), ModalitySpec("b", width=5)]).double()
    attn = model.decoder.blocks[0].attn
    view = model.view(ts)
    x = torch.randn(*ts.shape, 16, dtype=torch.float64)
    fast = make_plan(parse_mask("causal"), view, view, ts.valid, ts.valid)
    assert fast.is_causal and fast.mask is None
    dense = make_plan(parse_mask("causal&full"), view, view, ts.valid, ts.valid)
    assert dense.mask is not None
    for b, n in enumerate(ts.valid.sum(1).tolist()):
        torch.testing.assert_close(attn(x, fast)[b, :n], attn(x, dense)[b, :n], atol=1e-12, rtol=0)


def test_cross_attention_matches_naive_and_respects_encoder_padding():
    torch.manual_seed(2)
    cfg = ModelConfig(arch="encoder_decoder", d_model=16, heads=4, layers=1)
    model = Transformer(cfg, [ModalitySpec("a", vocab_size=9)]).double()
    cross = model.decoder.blocks[0].cross
    B, Lq, Lk = 2, 4, 6
    x = torch.randn(B, Lq, 16, dtype=torch.float64)
    memory = torch.randn(B, Lk, 16, dtype=torch.float64)
    mem_valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    got = cross(x, Plan(mem_valid[:, None, None, :]), memory=memory)
    (q,) = cross.split(cross.q(x), 1)
    k, v = cross.split(cross.kv(memory), 2)
    allowed = mem_valid[:, None, :].expand(B, Lq, Lk)
    want = cross.proj(naive_attention(q, k, v, allowed).transpose(1, 2).reshape(B, Lq, 16))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    memory2 = memory.clone()
    memory2[1, 3:] = torch.randn(3, 16, dtype=torch.float64)  # padded encoder tokens
    torch.testing.assert_close(cross(x, Plan(mem_valid[:, None, None, :]), memory=memory2)[1], got[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("pattern", sorted(REFERENCE))
def test_flex_mask_mod_is_the_same_predicate(pattern):
    from torch.nn.attention.flex_attention import create_mask

    from seqmodel.masks import dense_mask, flex_mask_mod

    exs, ts = mixed_batch()
    model = Transformer(ModelConfig(d_model=16, heads=2, layers=1), [ModalitySpec("a", vocab_size=9), ModalitySpec("b", width=5)])
    view = model.view(ts)
    B, L = ts.shape
    mm = flex_mask_mod(parse_mask(pattern), view, view, ts.valid)
    flex = create_mask(mm, B, 1, L, L, device="cpu")
    dense = dense_mask(parse_mask(pattern), view, view, ts.valid)
    assert torch.equal(flex, dense)


@pytest.mark.parametrize("text", ["", "causl", "sliding_window", "sliding_window:0", "local:x", "causal&", "(causal", "modality:text", "full|)"])
def test_bad_patterns_are_one_line_errors(text):
    from seqmodel.errors import UserError

    with pytest.raises(UserError) as err:
        parse_mask(text, "recipes/x.toml: [model] mask")
    assert "\n" not in str(err.value) and "[model] mask" in str(err.value)


@pytest.mark.parametrize("text", sorted(REFERENCE))
def test_patterns_round_trip_through_their_string(text):
    mask = parse_mask(text)
    assert parse_mask(str(mask)) == mask


def test_attention_backend_choice_and_its_errors():
    from seqmodel.errors import UserError

    exs, ts = mixed_batch()
    specs = [ModalitySpec("a", vocab_size=9), ModalitySpec("b", width=5)]
    assert [k for k, _ in ModelConfig(attention="flash").validate()] == ["attention"]
    assert [k for k, _ in ModelConfig(attention="flex", dropout=0.1).validate()] == ["attention"]
    assert not ModelConfig(attention="auto", dropout=0.1).validate()
    auto = Transformer(ModelConfig(d_model=16, heads=2, layers=1, mask="prefix"), specs)
    assert not auto.decoder.use_flex(torch.zeros(1))  # FlexAttention is only fast compiled on CUDA
    flex = Transformer(ModelConfig(d_model=16, heads=2, layers=1, mask="prefix", attention="flex"), specs)
    flex.load_state_dict(auto.state_dict())
    with torch.no_grad():
        a, f = auto(ts), flex(ts)
    torch.testing.assert_close(f[ts.valid], a[ts.valid], atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="no FlexAttention backward on cpu"):
        flex(ts)
