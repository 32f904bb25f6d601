"""FlexAttention for masks without an SDPA fast path (``[model] attention``).

The mask predicate becomes a block-sparse `BlockMask`: blocks where every pair is masked are
skipped instead of computed and zeroed, which is where it beats SDPA with a dense boolean mask
(local windows, segments, prefixes on long sets). FlexAttention is only fast compiled, so on CUDA
the kernel is compiled once; elsewhere it runs unfused, which is exact but slow, and torch has no
FlexAttention backward on CPU, so there it serves inference only (tests use it).
Rows whose every key is masked (padding) come out as zeros rather than NaN.

FlexAttention (and with it torch._dynamo) is imported on first use, not with the model: most
runs never need it, and importing it costs most of a second.
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
from torch import Tensor

from seqmodel.errors import UserError
from seqmodel.masks import Mask, TokenView, flex_mask_mod


def _flex():
    from torch.nn.attention import flex_attention

    return flex_attention


def block_mask(mask: Mask, q: TokenView, k: TokenView, k_valid: Tensor):
    B, Lq, Lk = q.index.shape[0], q.index.shape[1], k.index.shape[1]
    return _flex().create_block_mask(flex_mask_mod(mask, q, k, k_valid), B, None, Lq, Lk, device=q.index.device)


@cache
def _compiled():
    return torch.compile(_flex().flex_attention)


@cache
def _works_on(device: torch.device, head_dim: int, dtype: torch.dtype) -> bool:
    try:
        q, k, v = (torch.randn(1, 1, 256, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        bm = _flex().create_block_mask(lambda b, h, qi, ki: ki <= qi, 1, None, 256, 256, device=device)
        _compiled()(q, k, v, block_mask=bm).sum().backward()
        return True
    except Exception as err:  # noqa: BLE001 -- any failure means: stay on SDPA
        warnings.warn(f"FlexAttention is unavailable on {device} ({type(err).__name__}: {err}); using SDPA with dense masks")
        return False


@cache
def _uncompiled_probe():
    return torch.compiler.disable(_works_on)


def works_on(device: torch.device, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether compiled FlexAttention runs forward and backward here; `attention = "auto"` asks
    before using it and otherwise keeps SDPA (warning once with the reason)."""
    return _uncompiled_probe()(device, head_dim, dtype)


def flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask, enable_gqa: bool = False) -> Tensor:
    """Attention under `block_mask`; with `enable_gqa`, k and v may have fewer heads than q."""
    if q.device.type == "cuda":
        return _compiled()(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    if torch.is_grad_enabled() and q.requires_grad:
        raise UserError(f'[model] attention = "flex": torch has no FlexAttention backward on {q.device.type}; '
                        'train there with attention = "auto" or "sdpa"')
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return _flex().flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
