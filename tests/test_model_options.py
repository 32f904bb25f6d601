"""The `[model]` architecture options (norm, norm_eps, mlp, qk_norm, kv_heads, embed_norm) against
hand computations in float64 written here, and the model's properties under each option:
causality, KV-cache parity, the cache's size, gradient flow, and one-line errors."""

import math

import pytest
import torch
from conftest import tiny_char_recipe

from seqmodel import cli
from seqmodel.errors import UserError
from seqmodel.generate import generate
from seqmodel.masks import dense_mask, parse_mask
from seqmodel.model.config import ModelConfig
from seqmodel.model.kv_cache import DecodeCache
from seqmodel.model.layers import MLP, make_norm
from seqmodel.model.transformer import Attention, Plan, Transformer, make_plan
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment, collate

OPTIONS = {
    "rmsnorm": dict(norm="rmsnorm"),
    "gelu_tanh": dict(mlp="gelu_tanh"),
    "swiglu": dict(mlp="swiglu"),
    "relu2": dict(mlp="relu2"),
    "qk_norm": dict(qk_norm=True),
    "gqa": dict(kv_heads=2),
    "mqa": dict(kv_heads=1),
    "embed_norm": dict(embed_norm=True),
    "all": dict(norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", qk_norm=True, kv_heads=2, embed_norm=True),
}


def randomise_norms(model: torch.nn.Module) -> None:
    """Norm scales start at one; random ones make every hand computation below see them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.RMSNorm, torch.nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_()


def rms_norm(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def naive_attention(q, k, v, allowed):
    """q, k, v (B, H, L, D) with as many heads each; allowed (B, Lq, Lk)."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", torch.softmax(scores, -1), v)


def heads_of(x, width):
    B, L, _ = x.shape
    return x.reshape(B, L, -1, width).transpose(1, 2)


# -- norms -------------------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_rmsnorm_is_its_formula(eps):
    norm = make_norm(ModelConfig(norm="rmsnorm", norm_eps=eps), 24).double()
    randomise_norms(norm)
    x = torch.randn(3, 5, 24, dtype=torch.float64) * 3
    want = x / torch.sqrt((x * x).sum(-1, keepdim=True) / 24 + eps) * norm.weight
    torch.testing.assert_close(norm(x), want, atol=1e-12, rtol=0)
    assert not [n for n, _ in norm.named_parameters() if n != "weight"]  # no bias


@pytest.mark.parametrize("bias", [False, True])
def test_layernorm_uses_norm_eps(bias):
    norm = make_norm(ModelConfig(norm_eps=0.5, bias=bias), 24).double()
    randomise_norms(norm)
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 0.5) * norm.weight + (norm.bias if bias else 0)
    torch.testing.assert_close(norm(x), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_every_norm_of_the_model_follows_the_config(arch):
    cfg = ModelConfig(arch=arch, d_model=16, heads=2, layers=2, norm="rmsnorm", norm_eps=1e-3, embed_norm=True, qk_norm=True)
    model = Transformer(cfg, [ModalitySpec("text", vocab_size=9)])
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.RMSNorm, torch.nn.LayerNorm))]
    # a self-attention block: ln_attn, ln_mlp, q_norm, k_norm; a cross-attending one also ln_cross and
    # the cross q_norm, k_norm; each stack a final norm; one embed_norm
    want = {"decoder": 2 * 4 + 1 + 1, "encoder_decoder": 2 * 4 + 1 + 2 * 7 + 1 + 1}[arch]
    assert len(norms) == want
    assert all(isinstance(m, torch.nn.RMSNorm) and m.eps == 1e-3 for m in norms)


# -- MLPs --------------------------------------------------------------------------------------

def gelu_erf(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def relu2(x):
    return torch.clamp(x, min=0) ** 2


HAND_ACTIVATIONS = {"gelu": gelu_erf, "gelu_tanh": gelu_tanh, "relu2": relu2}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", ["gelu", "gelu_tanh", "relu2", "swiglu"])
def test_mlp_is_its_hand_computation(kind, bias):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, mlp=kind, mlp_ratio=3.0, bias=bias)
    mlp = MLP(cfg).double()
    if bias:
        with torch.no_grad():
            mlp.fc.bias.normal_()
            mlp.proj.bias.normal_()
    x = torch.randn(2, 5, 16, dtype=torch.float64) * 20  # large: the tanh GELU differs visibly from erf
    W, b = mlp.fc.weight, (mlp.fc.bias if bias else 0)
    W2, b2 = mlp.proj.weight, (mlp.proj.bias if bias else 0)
    if kind == "swiglu":
        hidden = 32  # 2/3 of 3 * 16 = 48
        assert W.shape == (2 * hidden, 16) and W2.shape == (16, hidden)
        gate = x @ W[:hidden].T + (b[:hidden] if bias else 0)
        up = x @ W[hidden:].T + (b[hidden:] if bias else 0)
        h = gate / (1 + torch.exp(-gate)) * up
    else:
        assert W.shape == (48, 16)
        h = HAND_ACTIVATIONS[kind](x @ W.T + b)
    torch.testing.assert_close(mlp(x), h @ W2.T + b2, atol=1e-9, rtol=1e-12)


def test_the_tanh_gelu_is_not_the_exact_one():
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    assert (gelu_tanh(x) - gelu_erf(x)).abs().max() > 1e-4


@pytest.mark.parametrize("d_model, ratio", [(128, 4.0), (192, 4.0), (384, 4.0), (32, 4.0), (100, 2.5)])
def test_swiglu_matches_the_gelu_parameter_count(d_model, ratio):
    def count(kind):
        return sum(p.numel() for p in MLP(ModelConfig(d_model=d_model, mlp_ratio=ratio, mlp=kind)).parameters())

    swiglu = MLP(ModelConfig(d_model=d_model, mlp_ratio=ratio, mlp="swiglu"))
    assert swiglu.proj.in_features % 8 == 0
    assert abs(count("swiglu") / count("gelu") - 1) < 0.06
    assert count("relu2") == count("gelu_tanh") == count("gelu")


# -- attention: qk_norm and grouped-query ------------------------------------------------------

def test_qk_norm_is_its_hand_computation_before_rotary():
    torch.manual_seed(1)
    cfg = ModelConfig(d_model=16, heads=2, layers=1, qk_norm=True, norm_eps=1e-4)
    attn = Attention(cfg).double()
    randomise_norms(attn)  # non-uniform scales: normalising after the rotation would differ
    B, L, Dh = 2, 6, 8
    x = torch.randn(B, L, 16, dtype=torch.float64)
    pos = torch.arange(L, dtype=torch.float64)
    freqs = 10000.0 ** (-torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    angle = pos[:, None] * freqs  # (L, Dh/2)
    rope = (angle.cos()[None, None], angle.sin()[None, None])

    def rotate(t):  # pairs (i, i + Dh/2), rotated by angle[pos, i]
        out = t.clone()
        for i in range(Dh // 2):
            a, b = t[..., i], t[..., i + Dh // 2]
            out[..., i] = a * angle[:, i].cos() - b * angle[:, i].sin()
            out[..., i + Dh // 2] = a * angle[:, i].sin() + b * angle[:, i].cos()
        return out

    Wq, Wk, Wv = attn.qkv.weight.split(16)
    q = rotate(rms_norm(heads_of(x @ Wq.T, Dh), attn.q_norm.weight, 1e-4))
    k = rotate(rms_norm(heads_of(x @ Wk.T, Dh), attn.k_norm.weight, 1e-4))
    v = heads_of(x @ Wv.T, Dh)
    allowed = torch.ones(L, L, dtype=torch.bool).tril().expand(B, L, L)
    want = attn.proj(naive_attention(q, k, v, allowed).transpose(1, 2).reshape(B, L, 16))
    got = attn(x, Plan(None, is_causal=True), rope)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def mixed_batch():
    """Two examples (segments a, b, a) of different lengths, right-padded."""
    g = torch.Generator().manual_seed(0)
    exs = [[Segment("a", ids=torch.randint(0, 9, (n[0],), generator=g)), Segment("b", values=torch.randn(n[1], 5, generator=g)),
            Segment("a", ids=torch.randint(0, 9, (n[2],), generator=g))] for n in [(3, 4, 2), (2, 2, 1)]]
    return exs, collate(exs)


def gqa_reference(attn: Attention, x, allowed, kv_heads, memory=None):
    """Project by hand, repeat each K/V head for its group of query heads (head h reads K/V head
    h // (heads / kv_heads)), and run ordinary attention."""
    Dh, H = attn.head_dim, attn.heads
    if memory is None:
        Wq, Wk, Wv = attn.qkv.weight.split([H * Dh, kv_heads * Dh, kv_heads * Dh])
        src = x
    else:
        Wq, (Wk, Wv) = attn.q.weight, attn.kv.weight.split(kv_heads * Dh)
        src = memory
    q, k, v = heads_of(x @ Wq.T, Dh), heads_of(src @ Wk.T, Dh), heads_of(src @ Wv.T, Dh)
    assert k.shape[1] == v.shape[1] == kv_heads
    group = torch.arange(H) // (H // kv_heads)
    y = naive_attention(q, k[:, group], v[:, group], allowed)
    B, L = x.shape[:2]
    return attn.proj(y.transpose(1, 2).reshape(B, L, H * Dh))


BACKENDS = [("causal", "causal_fast_path")] + [(p, b) for p in ("causal", "prefix", "sliding_window:3", "segment") for b in ("dense", "flex")]


@pytest.mark.parametrize("pattern, backend", BACKENDS)
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_attention_equals_repeated_kv_heads(kv_heads, pattern, backend):
    torch.manual_seed(2)
    exs, ts = mixed_batch()
    specs = [ModalitySpec("a", vocab_size=9), ModalitySpec("b", width=5)]
    model = Transformer(ModelConfig(d_model=32, heads=4, kv_heads=kv_heads, layers=1, mask=pattern), specs).double()
    attn = model.decoder.blocks[0].attn
    assert attn.qkv.weight.shape == (32 + 2 * kv_heads * 8, 32)
    B, L = ts.shape
    x = torch.randn(B, L, 32, dtype=torch.float64)
    view = model.view(ts)
    mask = parse_mask(pattern if backend == "causal_fast_path" else f"({pattern})&full")  # `&full`: no fast path
    plan = make_plan(mask, view, view, ts.valid, ts.valid, flex=backend == "flex")
    assert (plan.is_causal, plan.block_mask is not None) == (backend == "causal_fast_path", backend == "flex")
    allowed = dense_mask(parse_mask(pattern), view, view, ts.valid, ts.valid)[:, 0]
    with torch.set_grad_enabled(backend != "flex"):  # torch has no FlexAttention backward on CPU
        got = attn(x, plan)
    want = gqa_reference(attn, x, allowed, kv_heads)
    for b, n in enumerate(ts.valid.sum(1).tolist()):
        torch.testing.assert_close(got[b, :n], want[b, :n], atol=1e-9, rtol=0)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_grouped_query_cross_attention_equals_repeated_kv_heads(kv_heads):
    torch.manual_seed(3)
    cfg = ModelConfig(arch="encoder_decoder", d_model=32, heads=4, kv_heads=kv_heads, layers=1)
    cross = Transformer(cfg, [ModalitySpec("a", vocab_size=9)]).double().decoder.blocks[0].cross
    x, memory = torch.randn(2, 4, 32, dtype=torch.float64), torch.randn(2, 6, 32, dtype=torch.float64)
    mem_valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    got = cross(x, Plan(mem_valid[:, None, None, :]), memory=memory)
    want = gqa_reference(cross, x, mem_valid[:, None, :].expand(2, 4, 6), kv_heads, memory=memory)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_grouped_query_attention_with_cpu_dropout_equals_repeated_kv_heads(causal):
    """The CPU attention-with-dropout path draws its masks for the query heads: with the same seed
    it equals the same path run on K/V heads repeated by hand."""
    from seqmodel.model.dropout import attention_with_dropout

    torch.manual_seed(4)
    attn = Attention(ModelConfig(d_model=32, heads=4, kv_heads=2, dropout=0.3)).train()
    B, L = 2, 7
    x = torch.randn(B, L, 32)
    allowed = torch.ones(L, L, dtype=torch.bool).tril().expand(B, 1, L, L).clone()
    plan = Plan(None, is_causal=True) if causal else Plan(allowed)
    torch.manual_seed(5)
    got = attn(x, plan)
    q, k, v = attn.split(attn.qkv(x), 3)
    group = torch.arange(4) // 2
    torch.manual_seed(5)
    y = attention_with_dropout(q, k[:, group], v[:, group], plan.mask, plan.is_causal, 0.3)
    torch.testing.assert_close(got, attn.proj(y.transpose(1, 2).reshape(B, L, 32)), atol=1e-6, rtol=0)
    torch.manual_seed(5)
    assert not torch.allclose(attn.eval()(x, plan), got)  # dropout was on


# -- properties of the whole model under each option -------------------------------------------

TEXT = ModalitySpec("text", vocab_size=20)


def option_model(options, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{"d_model": 32, "heads": 4, "layers": 2, "context": 64, **kw, **options})
    model = Transformer(cfg, [TEXT, ModalitySpec("img", width=6)], outputs=("text",))
    randomise_norms(model)
    return model.eval()


@pytest.mark.parametrize("mask", ["causal", "sliding_window:4"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_future_token_cannot_change_the_past(option, mask):
    model = option_model(OPTIONS[option], mask=mask)
    for j in (0, 6, 11):
        ids = torch.randint(0, 20, (12,), generator=torch.Generator().manual_seed(j))
        other = ids.clone()
        other[j] = (other[j] + 1) % 20
        a, b = (model(collate([[Segment("text", ids=t)]]))[0] for t in (ids, other))
        diff = (a - b).abs().amax(-1) > 1e-6
        assert not diff[:j].any() and diff[j]


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_options_train_with_dropout_stay_causal_and_reach_every_parameter(option):
    model = option_model(OPTIONS[option], arch="encoder_decoder", dropout=0.2).train()
    ctx = collate([[Segment("img", values=torch.randn(5, 6))], [Segment("img", values=torch.randn(3, 6))]])
    ids = torch.randint(0, 20, (2, 10))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 20
    outs = []
    for t in (ids, changed):
        torch.manual_seed(6)
        outs.append(model(collate([[Segment("text", ids=r)] for r in t]), ctx))
    torch.testing.assert_close(outs[0][:, :7], outs[1][:, :7], atol=1e-6, rtol=0)
    outs[0].pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_encoder_options_see_the_whole_set(option):
    model = option_model(OPTIONS[option], arch="encoder", mask="full")
    ids = torch.randint(0, 20, (10,))
    other = ids.clone()
    other[7] = (other[7] + 1) % 20
    a, b = (model(collate([[Segment("text", ids=t)]]))[0] for t in (ids, other))
    assert ((a - b).abs().amax(-1) > 1e-6).all()


@pytest.mark.parametrize("option", ["gqa", "all"])
def test_flex_and_sdpa_backends_agree_under_the_options(option):
    exs, ts = mixed_batch()
    specs = [ModalitySpec("a", vocab_size=9), ModalitySpec("b", width=5)]
    models = {}
    for backend in ("sdpa", "flex"):
        torch.manual_seed(7)
        cfg = ModelConfig(d_model=32, heads=4, layers=2, mask="prefix", attention=backend, **OPTIONS[option])
        models[backend] = Transformer(cfg, specs).eval()
    randomise_norms(models["sdpa"])
    models["flex"].load_state_dict(models["sdpa"].state_dict())
    with torch.no_grad():
        a, f = models["sdpa"](ts), models["flex"](ts)
    torch.testing.assert_close(f[ts.valid], a[ts.valid], atol=1e-5, rtol=0)


def greedy_both_ways(model, prefix, n, context=None):
    logs = {True: [], False: []}
    out = {c: generate(model, prefix, n, lambda lg: int(lg.argmax()), context=context, use_cache=c,
                       on_logits=logs[c].append) for c in (True, False)}
    return out, {c: torch.stack(v) for c, v in logs.items()}


@pytest.mark.parametrize("mask", ["causal", "sliding_window:5", "prefix"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_cache_parity_decoder(option, mask):
    torch.manual_seed(3)
    specs = [ModalitySpec("text", vocab_size=20, position="rotary"), ModalitySpec("img", width=6)]
    model = Transformer(ModelConfig(d_model=32, heads=4, layers=3, context=24, mask=mask, **OPTIONS[option]), specs, outputs=("text",))
    randomise_norms(model)
    prefix = [Segment("img", values=torch.randn(3, 6)), Segment("text", ids=torch.tensor([1, 2, 3]))]
    out, logs = greedy_both_ways(model.eval(), prefix, 40)
    assert out[True] == out[False] and len(out[True]) == 40  # past the context (24) and the window
    torch.testing.assert_close(logs[True], logs[False], atol=1e-5, rtol=0)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_cache_parity_encoder_decoder(option):
    torch.manual_seed(4)
    specs = [ModalitySpec("text", vocab_size=20, max_positions=(16,)), ModalitySpec("img", width=6)]
    cfg = ModelConfig(arch="encoder_decoder", d_model=32, heads=4, layers=2, context=16, **OPTIONS[option])
    model = Transformer(cfg, specs, outputs=("text",))
    randomise_norms(model)
    out, logs = greedy_both_ways(model.eval(), [Segment("text", ids=torch.tensor([0]))], 30, [Segment("img", values=torch.randn(7, 6))])
    assert out[True] == out[False]
    torch.testing.assert_close(logs[True], logs[False], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kv_heads", [0, 2, 1])
def test_the_cache_holds_kv_heads_heads_and_nbytes_counts_them(kv_heads):
    torch.manual_seed(5)
    specs = [ModalitySpec("text", vocab_size=20), ModalitySpec("img", width=6)]
    cfg = ModelConfig(arch="encoder_decoder", d_model=32, heads=4, kv_heads=kv_heads, layers=3, context=16)
    model = Transformer(cfg, specs, outputs=("text",)).eval()
    cache = DecodeCache(cfg.context)
    memory = model.encode(collate([[Segment("img", values=torch.randn(7, 6))]]))
    with torch.no_grad():
        model.decode(collate([[Segment("text", ids=torch.tensor([1, 2]))]]), memory, cache)
    H = kv_heads or 4
    assert len(cache.self_kv) == len(cache.cross_kv) == 3
    for layer in cache.self_kv.values():
        assert layer.k.shape == layer.v.shape == (1, H, 16, 8)
    for k, v in cache.cross_kv.values():
        assert k.shape == v.shape == (1, H, 7, 8)
    assert cache.nbytes() == 3 * 2 * H * 8 * (16 + 7) * 4  # layers x (K, V) x heads x width x tokens x fp32


# -- configuration errors ----------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("norm", "batchnorm"), ("mlp", "geglu"), ("kv_heads", 3), ("kv_heads", -1),
                                        ("kv_heads", 8), ("norm_eps", 0.0), ("qk_norm", "yes")])
def test_bad_option_is_a_one_line_error_naming_the_key(tmp_path, corpus, capsys, key, value):
    recipe = tiny_char_recipe(tmp_path, corpus)  # heads = 2
    assert cli.main(["check", str(recipe), "--set", f"model.{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and f"[model] {key}" in err and str(recipe) in err


def test_rotary_positions_with_an_odd_head_width_is_a_one_line_error(tmp_path, corpus, capsys):
    recipe = tiny_char_recipe(tmp_path, corpus)
    code = cli.main(["check", str(recipe), "--set", "tokenizer.position=rotary", "--set", "model.d_model=30"])
    err = "\n".join(x for x in capsys.readouterr().err.splitlines() if not x.startswith("seqmodel: "))  # the fit note
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert "[model] d_model / heads" in err and "text" in err and "30 / 2 = 15" in err
    with pytest.raises(UserError):
        Transformer(ModelConfig(d_model=30, heads=2), [ModalitySpec("text", vocab_size=5, position="rotary")])


@pytest.mark.parametrize("option", ["rmsnorm", "swiglu", "mqa", "all"])
def test_options_through_check(tmp_path, corpus, capsys, option):
    recipe = tiny_char_recipe(tmp_path, corpus)
    sets = [a for k, v in OPTIONS[option].items() for a in ("--set", f"model.{k}={str(v).lower()}")]
    assert cli.main(["check", str(recipe), *sets]) == 0


def test_rmsnorm_under_bf16_autocast_runs_in_float32_without_a_fallback_warning():
    """torch's fused rms_norm refuses a bf16 input with an fp32 weight (a warning and an unfused
    path); under autocast ours computes in fp32 from the bf16 input, as autocast runs layer_norm."""
    import warnings

    from seqmodel.model.layers import RMSNorm

    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, rms_norm(x.float(), norm.weight, 1e-6), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(norm(x.float()), rms_norm(x.float(), norm.weight, 1e-6), rtol=1e-6, atol=1e-6)
