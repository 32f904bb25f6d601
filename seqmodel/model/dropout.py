"""Dropout for CPU training whose masks come from 16-bit random words.

On CPU, ``bernoulli_`` (behind ``nn.Dropout`` and SDPA's ``dropout_p``) spends about 10 ns per
element: at nanoGPT's default Shakespeare shape (dropout 0.2) that is a quarter of a training
step, most of it on the (B, H, T, T) attention weights. Cutting each 64-bit draw of torch's
generator into four 16-bit words gives the same Bernoulli masks about four times faster. The drop
probability is rounded to a multiple of 1/65536 (0.2 becomes 0.199997). On other devices the
native fused dropout is already fast and is used unchanged. Masks come from torch's default
generator, so a seeded step draws the same masks every time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WORDS = 65536


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> Tensor:
    """uint8 tensor: 0 (drop) with probability `p` rounded to a multiple of 1/65536, else 1 (keep).

    uint8 rather than bool because multiplying by it is about 2.5x faster on CPU than
    `torch.where` on a boolean mask, and it costs the same one byte per element to keep for backward.
    """
    n = math.prod(shape)
    draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    words = draws.view(torch.int16)[:n].view(shape)
    return (words >= -WORDS // 2 + round(p * WORDS)).view(torch.uint8)


class _MaskedScale(torch.autograd.Function):
    """x times the keep mask times `scale`; saves only the uint8 mask."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        out = x * keep
        return out.mul_(scale) if scale != 1.0 else out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        g = grad * keep
        return (g.mul_(ctx.scale) if ctx.scale != 1.0 else g), None, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout: the fast masks on CPU, the native fused dropout elsewhere."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class Dropout(nn.Module):
    """`nn.Dropout` with `dropout` above."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


QUERY_BLOCK = 128


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, p: float) -> Tensor:
    """softmax(q k^T / sqrt(d) masked) with dropout, times v: SDPA's math path with the fast masks (CPU).

    `mask` is SDPA's boolean mask (True: may attend). A query row with no visible key attends
    uniformly instead of producing NaN (the model's masks always leave one key visible).
    Causal attention goes through blocks of `QUERY_BLOCK` query rows, each against only the keys
    its rows can see, which skips most of the masked upper triangle.
    """
    out = _causal_in_blocks(q, k, v, p) if is_causal else _attend(q, k, v, mask, p)
    return out.mul_(1.0 / (1.0 - p))


def _causal_in_blocks(q: Tensor, k: Tensor, v: Tensor, p: float) -> Tensor:
    Lq, Lk = q.shape[-2], k.shape[-2]
    blocks = []
    for start in range(0, Lq, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, Lq)
        visible = end + Lk - Lq  # row r sees keys 0 .. r + Lk - Lq
        allowed = torch.ones(end - start, visible, dtype=torch.bool, device=q.device).tril(start + Lk - Lq)
        blocks.append(_attend(q[..., start:end, :], k[..., :visible, :], v[..., :visible, :], allowed, p))
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-2)


def _attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, p: float) -> Tensor:
    """Masked softmax attention with dropout, without the 1/(1-p): that is applied once to the
    (B, H, L, Dh) output, which is smaller than the weights."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if allowed is not None:
        scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)
    weights = scores.softmax(-1)
    return _MaskedScale.apply(weights, keep_mask(weights.shape, p, weights.device), 1.0) @ v
