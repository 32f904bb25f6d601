"""The configurable parts of a block besides attention: normalisation layers (`[model] norm`)
and MLPs (`[model] mlp`).

References: Zhang & Sennrich 2019 (RMSNorm); Hendrycks & Gimpel 2016 (GELU and its tanh
approximation, used by GPT-2); Shazeer 2020 (SwiGLU); So et al. 2021 (squared ReLU, Primer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmodel.model.config import ModelConfig, mlp_hidden
from seqmodel.model.dropout import Dropout


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` that runs in float32 under autocast, as autocast runs `layer_norm`: torch's
    fused kernel refuses a bfloat16 input with a float32 weight and falls back, with a warning,
    to a slower unfused path."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        return F.rms_norm(x.float(), self.normalized_shape, weight, self.eps)


def make_norm(cfg: ModelConfig, width: int) -> nn.Module:
    """The configured normalisation layer (`[model] norm`, `norm_eps`) over `width` features."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(width, eps=cfg.norm_eps)
    return nn.LayerNorm(width, eps=cfg.norm_eps, bias=cfg.bias)


def swiglu(h: Tensor) -> Tensor:
    """silu(gate) * up, with h = [gate | up] along the last dimension."""
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_tanh(h: Tensor) -> Tensor:
    return F.gelu(h, approximate="tanh")


def relu2(h: Tensor) -> Tensor:
    return F.relu(h).square()


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "swiglu": swiglu, "relu2": relu2}


class MLP(nn.Module):
    """x -> proj(activation(fc(x))); for SwiGLU `fc` holds the gate and up matrices stacked."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = mlp_hidden(cfg)
        self.activation = ACTIVATIONS[cfg.mlp]
        self.fc = nn.Linear(cfg.d_model, 2 * hidden if cfg.mlp == "swiglu" else hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.proj.is_residual = True
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(self.activation(self.fc(x))))
