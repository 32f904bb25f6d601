"""The configs of the model room that are data: `[model]` (`ModelConfig`), `[sample]`
(`SampleConfig`) and `[train] lora` (`LoRAConfig`).

Torch-free, so that parsing and checking a recipe imports no torch; the modules that build
tensors (`seqmodel.model.transformer`, `layers`, `lora`, `seqmodel.generate`) take these whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from seqmodel.errors import UserError
from seqmodel.masks import parse_mask

ARCHS = ("decoder", "encoder", "encoder_decoder")
ATTENTION = ("auto", "sdpa", "flex")
MLPS = ("gelu", "gelu_tanh", "swiglu", "relu2")  # the keys of seqmodel.model.layers.ACTIVATIONS
NORMS = ("layernorm", "rmsnorm")


@dataclass
class ModelConfig:
    """The `[model]` table of a recipe."""

    arch: str = "decoder"
    """"decoder", "encoder" or "encoder_decoder"."""
    layers: int = 4
    """Blocks in the main stack (the decoder of an encoder-decoder)."""
    encoder_layers: int = 0
    """Blocks in the encoder of an encoder-decoder; 0 means the same as `layers`."""
    d_model: int = 128
    """Width of every token vector."""
    heads: int = 4
    """Attention heads; must divide d_model."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of d_model."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches."""
    mask: str = "causal"
    """Self-attention mask of the main stack (see seqmodel.masks for the grammar)."""
    layer_masks: list[str] = field(default_factory=list)
    """Per-layer mask schedule, cycled over the layers; overrides `mask` when given."""
    encoder_mask: str = "full"
    """Self-attention mask of the encoder of an encoder-decoder."""
    context: int = 256
    """Longest token set the model is trained on (sizes the default 1-D position tables)."""
    bias: bool = False
    """Biases in linear layers and LayerNorms."""
    tie_embeddings: bool = True
    """Discrete output heads share the input embedding table."""
    modality_embedding: bool = True
    """Add a learned per-modality vector to every token (switch off for ablations)."""
    rope_base: float = 10000.0
    """Base of the rotary frequencies, for modalities with rotary positions."""
    attention: str = "auto"
    """How masks without a fast path are applied: "sdpa" (a dense boolean mask), "flex"
    (FlexAttention's block-sparse mask; no attention dropout) or "auto" (flex on CUDA when no
    attention dropout is active, sdpa otherwise)."""
    norm: str = "layernorm"
    """Every normalisation layer (before attention, cross-attention, MLP, after the stack, and
    `embed_norm`): "layernorm" or "rmsnorm" (Zhang & Sennrich 2019: no mean subtraction, no bias)."""
    norm_eps: float = 1e-5
    """Epsilon of every norm (`qk_norm` included); GPT-2 uses 1e-5, Llama-family models 1e-5 or 1e-6."""
    mlp: str = "gelu"
    """The MLP and its activation (what GPT-2 importers call `activation`): "gelu" (exact erf
    GELU), "gelu_tanh" (GPT-2's tanh approximation, for released GPT-2 weights), "relu2" (squared
    ReLU, So et al. 2021) or "swiglu" (Shazeer 2020: silu(x W_gate) * (x W_up), then W_down). SwiGLU
    has three matrices instead of two, so its hidden width is 2/3 of mlp_ratio * d_model, rounded
    to the nearest multiple of 8: the parameter count matches the GELU MLP's to within a few per cent."""
    qk_norm: bool = False
    """Normalise queries and keys per head (an RMSNorm over the head width, one learned scale
    shared by the heads) before rotary positions and attention, as OLMo 2 and Gemma 3 do."""
    kv_heads: int = 0
    """Key/value heads: fewer than `heads` is grouped-query attention (1: multi-query; Ainslie et
    al. 2023), each shared by heads / kv_heads query heads; the KV cache shrinks by the same
    factor. Must divide `heads`; 0 means the same as `heads`."""
    embed_norm: bool = False
    """Normalise the summed token embeddings (input, position, modality) before the first block,
    with the configured `norm`: the Decision Transformer's `embed_ln`."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = []
        if self.arch not in ARCHS:
            bad.append(("arch", f"expected one of {', '.join(ARCHS)}, got {self.arch!r}"))
        for key in ("layers", "d_model", "heads", "context"):
            if getattr(self, key) < 1:
                bad.append((key, f"must be at least 1, got {getattr(self, key)}"))
        if self.heads >= 1 and self.d_model % self.heads:
            bad.append(("heads", f"must divide d_model={self.d_model}, got {self.heads}"))
        if not 0.0 <= self.dropout < 1.0:
            bad.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if self.attention not in ATTENTION:
            bad.append(("attention", f"expected one of {', '.join(ATTENTION)}, got {self.attention!r}"))
        elif self.attention == "flex" and self.dropout:
            bad.append(("attention", "\"flex\" has no attention dropout; set dropout = 0 or attention = \"auto\""))
        if self.mlp_ratio <= 0:
            bad.append(("mlp_ratio", f"must be positive, got {self.mlp_ratio}"))
        for key, allowed in (("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, key) not in allowed:
                bad.append((key, f"expected one of {', '.join(allowed)}, got {getattr(self, key)!r}"))
        if not self.norm_eps > 0:
            bad.append(("norm_eps", f"must be positive, got {self.norm_eps}"))
        if self.kv_heads < 0 or self.heads >= 1 and self.kv_heads and self.heads % self.kv_heads:
            bad.append(("kv_heads", f"must divide heads={self.heads} (0: the same as heads), got {self.kv_heads}"))
        for key, texts in (("mask", [self.mask]), ("encoder_mask", [self.encoder_mask]), ("layer_masks", self.layer_masks)):
            for text in texts:
                try:
                    parse_mask(text, where="")
                except UserError as err:
                    bad.append((key, str(err)))
        return bad


def mlp_hidden(cfg: ModelConfig) -> int:
    """The MLP's hidden width: mlp_ratio * d_model, or 2/3 of it to a multiple of 8 for SwiGLU."""
    hidden = int(cfg.mlp_ratio * cfg.d_model)
    return max(8, 8 * round(hidden * 2 / 3 / 8)) if cfg.mlp == "swiglu" else hidden


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes [-2**63, 2**64 - 1]; negatives alias large seeds
MIN_TEMPERATURE = 1e-6  # below it, logits / temperature can overflow float32 and softmax gives NaN


@dataclass
class SampleConfig:
    """The `[sample]` table of a recipe: defaults for `seqmodel sample` and end-of-run samples."""

    prompt: str = "\n"
    """Text (or other input, as the task reads it) the samples start from."""
    max_new_tokens: int = 500
    """How many tokens to generate."""
    temperature: float = 0.8
    """Softmax temperature; lower is more conservative (0: greedy; otherwise at least 1e-6)."""
    top_k: int = 200
    """Keep only the k most likely tokens (0 keeps all)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability (1 keeps all)."""
    greedy: bool = False
    """Always take the most likely token."""
    seed: int = 1337
    """Random seed of the sampler."""
    num_samples: int = 2
    """Samples written at the end of a run (sample k uses seed + k)."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when every value can be sampled with."""
        bad = []
        if self.max_new_tokens < 1:
            bad.append(("max_new_tokens", f"must be at least 1, got {self.max_new_tokens}"))
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature < math.inf):
            problem = f"must be 0 (greedy) or a finite number of at least {MIN_TEMPERATURE:g}, got {self.temperature}"
            bad.append(("temperature", problem))
        if self.top_k < 0:
            bad.append(("top_k", f"must be 0 (keep all) or positive, got {self.top_k}"))
        if not 0 <= self.top_p <= 1:
            bad.append(("top_p", f"must be between 0 and 1 (1 keeps all), got {self.top_p}"))
        if self.num_samples < 0:
            bad.append(("num_samples", f"must not be negative, got {self.num_samples}"))
        top = SEED_MAX - max(self.num_samples - 1, 0)
        if not 0 <= self.seed <= top:
            problem = (f"must be between 0 and {top} (torch's generator takes seeds up to 2**64 - 1, and sample k "
                       f"uses seed + k), got {self.seed}")
            bad.append(("seed", problem))
        return bad


@dataclass
class LoRAConfig:
    """`[train] lora = {rank = 8, alpha = 16, targets = ["qkv", "proj", "fc"]}`."""

    rank: int = 0
    """Rank of each adapter (0: no LoRA, the whole model trains)."""
    alpha: float = 16.0
    """Scale of the adapters' output: alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc"])
    """Linear layers to adapt, by the end of their name: "qkv" (self-attention), "q" and "kv"
    (cross-attention), "proj" (attention and MLP outputs), "fc" (MLP input), or a longer suffix
    such as "attn.proj"."""

    def validate(self) -> list[tuple[str, str]]:
        bad = []
        if self.rank < 0:
            bad.append(("rank", f"must be 0 (off) or positive, got {self.rank}"))
        if self.alpha <= 0:
            bad.append(("alpha", f"must be positive, got {self.alpha}"))
        if not 0 <= self.dropout < 1:
            bad.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if self.rank and not self.targets:
            bad.append(("targets", "must name at least one linear layer"))
        return bad
