"""CPU dropout from 16-bit random words: drop rate, scaling, gradients, determinism, and attention
with dropout against a naive computation that uses the same masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import seqmodel.model.dropout as dropout_module
from seqmodel.model.config import ModelConfig
from seqmodel.model.dropout import Dropout, attention_with_dropout, dropout, keep_mask
from seqmodel.model.transformer import Transformer
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import dense_set


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_drop_rate_matches_p(p: float) -> None:
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of four
    rate = 1.0 - float(keep_mask((n,), p).float().mean())
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n) + 1 / 65536


def test_masks_are_independent_across_positions() -> None:
    torch.manual_seed(1)
    m = keep_mask((400_000,), 0.5).float()
    # neighbours come from the same 64-bit draw: their correlation must still be ~0
    corr = float(torch.corrcoef(torch.stack([m[:-1], m[1:]]))[0, 1])
    assert abs(corr) < 0.01


def test_forward_scales_kept_elements_and_gradient_uses_the_same_mask() -> None:
    torch.manual_seed(2)
    x = torch.randn(64, 129, requires_grad=True)
    y = dropout(x, 0.25)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, kept.float() / 0.75)


def test_same_seed_same_mask_and_eval_is_identity() -> None:
    x = torch.ones(1000)
    torch.manual_seed(3)
    a = dropout(x, 0.3)
    torch.manual_seed(3)
    b = dropout(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(a, dropout(x, 0.3))
    module = Dropout(0.3).eval()
    assert module(x) is x


def _naive_attention(q, k, v, allowed, drop, p):
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    weights = weights.masked_fill(drop, 0.0) / (1 - p)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v.double())


@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_dropout_equals_naive_with_the_same_masks(causal: bool) -> None:
    B, H, L, D, p = 2, 3, 9, 8, 0.2
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    allowed = torch.ones(L, L, dtype=torch.bool).tril() if causal else torch.rand(B, 1, L, L) > 0.3
    if not causal:
        allowed[..., 0] = True  # every row sees a key, as the model's masks guarantee
    torch.manual_seed(4)
    got = attention_with_dropout(q, k, v, None if causal else allowed, causal, p)
    torch.manual_seed(4)
    drop = keep_mask((B, H, L, L), p) == 0
    want = _naive_attention(q, k, v, allowed.expand(B, H, L, L), drop, p)
    assert torch.allclose(got.double(), want, atol=1e-5)


@pytest.mark.parametrize("Lq, Lk", [(300, 300), (130, 260)])
def test_causal_attention_in_query_blocks_equals_naive_with_the_masks_it_drew(monkeypatch, Lq: int, Lk: int) -> None:
    """Past QUERY_BLOCK rows causal attention is computed block by block against the keys each
    block can see; put together, its masks and output equal the naive full computation."""
    B, H, D, p = 1, 2, 4, 0.3
    q, k, v = torch.randn(B, H, Lq, D), torch.randn(B, H, Lk, D), torch.randn(B, H, Lk, D)
    drawn = []

    def recording_keep_mask(shape, p, device="cpu"):
        drawn.append(keep_mask(shape, p, device))
        return drawn[-1]

    monkeypatch.setattr(dropout_module, "keep_mask", recording_keep_mask)
    got = attention_with_dropout(q, k, v, None, True, p)
    assert len(drawn) == math.ceil(Lq / dropout_module.QUERY_BLOCK) > 1
    keep = torch.zeros(B, H, Lq, Lk, dtype=torch.uint8)
    row = 0
    for block in drawn:
        keep[..., row:row + block.shape[-2], :block.shape[-1]] = block
        row += block.shape[-2]
    allowed = torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq)
    want = _naive_attention(q, k, v, allowed.expand(B, H, Lq, Lk), keep == 0, p)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_without_dropout_it_equals_sdpa() -> None:
    q, k, v = (torch.randn(2, 2, 7, 4) for _ in range(3))
    got = attention_with_dropout(q, k, v, None, True, 1e-9)
    assert torch.allclose(got, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5)


def test_training_with_dropout_stays_causal() -> None:
    """With the same random masks, a future token cannot change an earlier output."""
    cfg = ModelConfig(layers=2, heads=2, d_model=16, context=12, dropout=0.3)
    model = Transformer(cfg, [ModalitySpec("text", vocab_size=11)], outputs=("text",)).train()
    ids = torch.randint(0, 11, (2, 12))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 11
    torch.manual_seed(5)
    a = model(dense_set("text", ids=ids))
    torch.manual_seed(5)
    b = model(dense_set("text", ids=changed))
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6) and not torch.allclose(a[:, 8:], b[:, 8:])
