"""The one transformer: a pre-norm block stack over sets of tokens.

Encoder, decoder and encoder-decoder are the same `Block`s: what differs is the mask schedule
and whether blocks cross-attend to an encoder's output. Every token is
``adapter(input) + position(pos) + modality_embedding[modality]``; the adapter is an embedding
table (discrete modalities) or a linear projection (continuous ones).

References: Vaswani et al. 2017 (Transformer); Radford et al. 2019 and karpathy/nanoGPT (pre-norm
GPT, init); Dosovitskiy et al. 2020 (ViT patches); Su et al. 2021 (rotary positions); Ainslie et
al. 2023 (grouped-query attention); Dehghani et al. 2023 and OLMo 2 (query-key normalisation);
Chen et al. 2021 (Decision Transformer's embedding LayerNorm). The norms and MLPs to choose
from are in seqmodel.model.layers, the KV cache in seqmodel.model.kv_cache, the `[model]`
config in seqmodel.model.config.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from seqmodel.errors import UserError
from seqmodel.masks import MaskSchedule, TokenView, dense_mask, is_full, is_plain_causal
from seqmodel.model.config import ModelConfig
from seqmodel.model.dropout import Dropout, attention_with_dropout
from seqmodel.model.flex import block_mask, flex_attention
from seqmodel.model.flex import works_on as flex_works_on
from seqmodel.model.kv_cache import DecodeCache
from seqmodel.model.layers import MLP, RMSNorm, make_norm
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import ModalityInputs, TokenSet


class Plan(NamedTuple):
    """How one attention call applies its mask: a dense boolean tensor or a fast path."""

    mask: Tensor | None  # (B, 1, Lq, Lk) bool
    is_causal: bool = False
    block_mask: object = None  # a FlexAttention BlockMask, used instead of `mask`


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) by the per-token angles; x (B, H, L, Dh)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    """Multi-head attention over the set (self) or from the set to an encoder's output (cross),
    with `kv_heads` key/value heads shared by groups of query heads."""

    def __init__(self, cfg: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        D = cfg.d_model
        self.heads, self.cross, self.dropout = cfg.heads, cross, cfg.dropout
        self.kv_heads = cfg.kv_heads or cfg.heads
        self.head_dim = D // cfg.heads
        self.widths = (D, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim)  # q, k, v
        if cross:
            self.q = nn.Linear(D, D, bias=cfg.bias)
            self.kv = nn.Linear(D, sum(self.widths[1:]), bias=cfg.bias)
        else:
            self.qkv = nn.Linear(D, sum(self.widths), bias=cfg.bias)
        self.q_norm = RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.proj = nn.Linear(D, D, bias=cfg.bias)
        self.proj.is_residual = True

    def split(self, x: Tensor, n: int) -> list[Tensor]:
        """The head views (B, H or kv_heads, L, Dh) of a projection x: n = 3 (q, k, v), 2 (k, v)
        or 1 (q); backward joins their gradients with one `cat`."""
        widths = self.widths[:1] if n == 1 else self.widths[3 - n :]
        return [rearrange(part, "b l (h d) -> b h l d", d=self.head_dim) for part in x.split(widths, dim=-1)]

    def forward(self, x, plan: Plan, rope=None, memory=None, cache: DecodeCache | None = None, layer: int = 0):
        if self.cross:
            (q,) = self.split(self.q(x), 1)  # (B, H, Lq, Dh)
            if cache is not None and layer in cache.cross_kv:
                k, v = cache.cross_kv[layer]
            else:
                k, v = self.split(self.kv(memory), 2)  # (B, kv_heads, Lk, Dh)
                k = k if self.k_norm is None else self.k_norm(k)
                if cache is not None:
                    cache.cross_kv[layer] = (k, v)
            q = q if self.q_norm is None else self.q_norm(q)
        else:
            q, k, v = self.split(self.qkv(x), 3)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                k, v = cache.layer(layer).append(k, v, cache.length, cache.capacity)
        return self.proj(rearrange(self.attend(q, k, v, plan), "b h l d -> b l (h d)"))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan) -> Tensor:
        """softmax(q k^T / sqrt(Dh)) v under `plan`; k and v may have fewer heads than q."""
        gqa = self.kv_heads != self.heads
        if plan.block_mask is not None:
            return flex_attention(q, k, v, plan.block_mask, enable_gqa=gqa)
        if self.training and self.dropout and q.device.type == "cpu":  # see seqmodel.model.dropout
            if gqa:
                k, v = (t.repeat_interleave(self.heads // self.kv_heads, dim=1) for t in (k, v))
            return attention_with_dropout(q, k, v, plan.mask, plan.is_causal, self.dropout)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=plan.mask, dropout_p=p, is_causal=plan.is_causal, enable_gqa=gqa)


class Block(nn.Module):
    """Pre-norm self-attention, optional cross-attention, MLP; each a residual branch."""

    def __init__(self, cfg: ModelConfig, cross: bool) -> None:
        super().__init__()
        self.ln_attn = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg)
        self.ln_cross = make_norm(cfg, cfg.d_model) if cross else None
        self.cross = Attention(cfg, cross=True) if cross else None
        self.ln_mlp = make_norm(cfg, cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x, plan, rope=None, memory=None, cross_plan=None, cache=None, layer=0):
        x = x + self.drop(self.attn(self.ln_attn(x), plan, rope, cache=cache, layer=layer))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.ln_cross(x), cross_plan, memory=memory, cache=cache, layer=layer))
        return x + self.mlp(self.ln_mlp(x))


class Stack(nn.Module):
    """Blocks with a per-layer mask schedule, then a final norm."""

    def __init__(self, cfg: ModelConfig, layers: int, schedule: MaskSchedule, cross: bool) -> None:
        super().__init__()
        self.schedule, self.attention, self.dropout = schedule, cfg.attention, cfg.dropout
        self.head_dim = cfg.d_model // cfg.heads
        self.blocks = nn.ModuleList(Block(cfg, cross) for _ in range(layers))
        self.ln_f = make_norm(cfg, cfg.d_model)

    def forward(self, x, q: TokenView, k: TokenView, k_valid, q_valid, rope=None, memory=None, cross_plan=None, cache=None,
                schedule: MaskSchedule | None = None):
        """`schedule` replaces the stack's own mask schedule for this call (a mixture member's)."""
        plans: dict = {}
        Lq, Lk = q.index.shape[1], k.index.shape[1]
        schedule = schedule or self.schedule
        for i, block in enumerate(self.blocks):
            mask = schedule.for_layer(i)
            if mask not in plans:  # FlexAttention is only asked about for masks without a fast path
                plans[mask] = fast_plan(mask, Lq, Lk, k_valid) or masked_plan(
                    mask, q, k, k_valid, q_valid, cache is None and self.use_flex(x))
            x = block(x, plans[mask], rope, memory, cross_plan, cache, i)
        return self.ln_f(x)

    def use_flex(self, x: Tensor) -> bool:
        if self.attention != "auto":
            return self.attention == "flex"
        if x.device.type != "cuda" or self.training and self.dropout:
            return False
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        return flex_works_on(x.device, self.head_dim, dtype)


def make_plan(mask, q: TokenView, k: TokenView, k_valid: Tensor, q_valid: Tensor, flex: bool = False) -> Plan:
    """Pick the cheapest exact way to apply `mask` (all backends read the same predicate)."""
    return fast_plan(mask, q.index.shape[1], k.index.shape[1], k_valid) or masked_plan(mask, q, k, k_valid, q_valid, flex)


def fast_plan(mask, Lq: int, Lk: int, k_valid: Tensor) -> Plan | None:
    """SDPA's mask-free paths, where `mask` allows them; None otherwise.

    Only the second path reads `k_valid` on the host: plain causal self-attention (training a
    decoder) never waits for the device here, and compiles without a graph break."""
    if is_plain_causal(mask) and Lq == Lk:
        return Plan(None, is_causal=True)  # sets are right-padded: padded keys follow every valid query
    if (is_plain_causal(mask) and Lq == 1 or is_full(mask)) and all_valid(k_valid):
        return Plan(None)
    return None


def all_valid(valid: Tensor) -> bool:
    """Whether no token is padding, read on the host; False while `torch.export` traces the model
    (an exported graph cannot branch on data, so it always applies the padding mask)."""
    return not torch.compiler.is_exporting() and bool(valid.all())


def masked_plan(mask, q: TokenView, k: TokenView, k_valid: Tensor, q_valid: Tensor, flex: bool) -> Plan:
    """`mask` as a FlexAttention block mask or a dense boolean mask."""
    if flex:
        return Plan(None, block_mask=block_mask(mask, q, k, k_valid))
    return Plan(dense_mask(mask, q, k, k_valid, q_valid))


class PositionEncoding(nn.Module):
    """Learned tables, one per position coordinate, summed (1-D, factorised 2-D, timestep)."""

    def __init__(self, spec: ModalitySpec, d_model: int, context: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, d_model) for n in spec.position_tables(context))

    def forward(self, positions: Tensor) -> Tensor | int:  # (B, T, P) -> (B, T, D)
        return sum((t(positions[..., i]) for i, t in enumerate(self.tables)), 0)


class Transformer(nn.Module):
    """The core model. See the module docstring.

    Args:
        cfg: the model config.
        specs: one `ModalitySpec` per modality the model may see.
        outputs: modalities that need an output head (the task's targets).
    """

    def __init__(self, cfg: ModelConfig, specs: list[ModalitySpec], outputs: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.cfg, self.specs = cfg, {s.name: s for s in specs}
        D = cfg.d_model
        self.adapters = nn.ModuleDict(
            {s.name: nn.Embedding(s.vocab_size, D) if s.discrete else nn.Linear(s.width, D) for s in specs}
        )
        self.positions = nn.ModuleDict({s.name: PositionEncoding(s, D, cfg.context) for s in specs})
        self.modality_code = {s.name: i for i, s in enumerate(specs)}
        self.modality_emb = nn.Embedding(len(specs), D) if cfg.modality_embedding else None
        self.rotary = {s.name for s in specs if s.position == "rotary"}
        if self.rotary and (D // cfg.heads) % 2:
            raise UserError(f"[model] d_model / heads: rotary positions (modality {', '.join(sorted(self.rotary))}) need "
                            f"an even head width, got d_model / heads = {D} / {cfg.heads} = {D // cfg.heads}")
        self.embed_norm = make_norm(cfg, D) if cfg.embed_norm else None
        self.drop = Dropout(cfg.dropout)
        self.encoder = self.decoder = None
        if cfg.arch == "encoder_decoder":
            enc = MaskSchedule.parse(cfg.encoder_mask, where="model.encoder_mask")
            self.encoder = Stack(cfg, cfg.encoder_layers or cfg.layers, enc, cross=False)
        main = Stack(cfg, cfg.layers, MaskSchedule.parse(cfg.mask, cfg.layer_masks), cross=cfg.arch == "encoder_decoder")
        if cfg.arch == "encoder":
            self.encoder = main
        else:
            self.decoder = main
        self.heads = nn.ModuleDict()
        for name in outputs:
            s = self.specs[name]
            self.heads[name] = nn.Linear(D, s.vocab_size if s.discrete else s.width, bias=not s.discrete)
        self.apply(self._init)
        if self.modality_emb is not None:
            nn.init.zeros_(self.modality_emb.weight)  # a random start is one shared offset on every token: it slows early steps
        for name, head in self.heads.items():
            if self.specs[name].discrete and cfg.tie_embeddings:
                head.weight = self.adapters[name].weight

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * self.cfg.layers) if getattr(m, "is_residual", False) else 0.02
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    @property
    def masks(self) -> MaskSchedule:
        """The main stack's mask schedule (what `decode` applies unless a call gives another)."""
        return (self.decoder or self.encoder).schedule

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- inputs ------------------------------------------------------------------------------
    def embed_modality(self, name: str, inp: ModalityInputs) -> Tensor:
        if name not in self.adapters:
            raise KeyError(f"the model has no modality {name!r} (it knows {', '.join(self.adapters)})")
        x = self.adapters[name](inp.ids if inp.ids is not None else inp.values)
        x = x + self.positions[name](inp.positions)
        if self.modality_emb is not None:
            x = x + self.modality_emb.weight[self.modality_code[name]]
        return x

    def embed(self, ts: TokenSet) -> Tensor:
        """The set as vectors (B, L, D), each token placed at its slot."""
        B, L = ts.shape
        if len(ts.inputs) == 1 and next(iter(ts.inputs.values())).dense:
            name, inp = next(iter(ts.inputs.items()))
            x = self.embed_modality(name, inp)
        else:
            x = None
            for name, inp in ts.inputs.items():
                e = self.embed_modality(name, inp)  # (B, Tm, D)
                if x is None:
                    x = e.new_zeros(B, L, e.shape[-1])
                rows = torch.arange(B, device=e.device)[:, None].expand_as(inp.slot)
                x = x.index_put((rows[inp.valid], inp.slot[inp.valid]), e[inp.valid])
        return self.drop(x if self.embed_norm is None else self.embed_norm(x))

    def view(self, ts: TokenSet, offset: int = 0) -> TokenView:
        """Metadata of the set's tokens, modality codes in this model's numbering."""
        remap = torch.tensor([self.modality_code.get(m, -2) for m in ts.modalities] + [-1], device=ts.valid.device)
        index = torch.arange(offset, offset + ts.shape[1], device=ts.valid.device).expand(ts.shape)
        return TokenView(index, ts.segment, ts.doc, ts.time, remap[ts.modality], self.modality_code)

    def rope(self, ts: TokenSet, view: TokenView) -> tuple[Tensor, Tensor] | None:
        if not self.rotary:
            return None
        on = torch.zeros(len(self.modality_code) + 2, dtype=torch.bool, device=ts.valid.device)
        for name in self.rotary:
            on[self.modality_code[name]] = True
        pos = torch.where(on[view.modality], ts.time, 0).float()  # (B, L)
        dh = self.cfg.d_model // self.cfg.heads
        freqs = self.cfg.rope_base ** (-torch.arange(0, dh, 2, device=pos.device).float() / dh)
        angles = pos[:, None, :, None] * freqs  # (B, 1, L, Dh/2)
        return angles.cos(), angles.sin()

    # -- forward -----------------------------------------------------------------------------
    def encode(self, ts: TokenSet, masks: MaskSchedule | None = None) -> tuple[Tensor, Tensor]:
        """Run the encoder stack: (hidden (B, L, D), valid (B, L)); `masks` replaces its schedule."""
        v = self.view(ts)
        return self.encoder(self.embed(ts), v, v, ts.valid, ts.valid, self.rope(ts, v), schedule=masks), ts.valid

    def decode(self, ts: TokenSet, memory: tuple[Tensor, Tensor] | None = None, cache: DecodeCache | None = None,
               masks: MaskSchedule | None = None) -> Tensor:
        """Run the decoder stack, optionally cross-attending to `memory` and extending `cache`;
        `masks` replaces its mask schedule."""
        offset = cache.length if cache is not None else 0
        q = self.view(ts, offset)
        k, k_valid = q, ts.valid
        if cache is not None:
            meta = [*q[:5], ts.valid]
            cache.meta = meta if cache.meta is None else [torch.cat(p, 1) for p in zip(cache.meta, meta)]
            k, k_valid = TokenView(*cache.meta[:5], self.modality_code), cache.meta[5]
            memory = memory if memory is not None else cache.memory
            cache.memory = memory
        cross_plan = None
        if self.decoder.blocks[0].cross is not None:
            if memory is None:
                raise ValueError("an encoder_decoder model needs an encoder input (context)")
            mem_valid = memory[1]
            cross_plan = Plan(None if all_valid(mem_valid) else mem_valid[:, None, None, :])
        out = self.decoder(self.embed(ts), q, k, k_valid, ts.valid, self.rope(ts, q), memory[0] if memory else None, cross_plan,
                           cache, masks)
        if cache is not None:
            cache.length += ts.shape[1]
        return out

    def forward(self, ts: TokenSet, context: TokenSet | None = None, cache: DecodeCache | None = None,
                masks: MaskSchedule | None = None) -> Tensor:
        """Final hidden states (B, L, D) of `ts` (encoder-decoder: `context` goes to the encoder);
        `masks` replaces the main stack's mask schedule for this call."""
        if self.decoder is None:
            return self.encode(ts, masks)[0]
        memory = self.encode(context) if self.encoder is not None and context is not None else None
        return self.decode(ts, memory, cache, masks)

    # -- outputs -----------------------------------------------------------------------------
    def output(self, name: str, hidden: Tensor, ts: TokenSet) -> Tensor:
        """The head of modality `name` on its tokens: (B, Tm, V) logits or (B, Tm, F) values."""
        inp = ts.inputs[name]
        if not inp.dense:
            rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
            hidden = hidden[rows, inp.slot]
        return self.heads[name](hidden)


class MaskedCore:
    """The core as one member of a mixture sees it: every parameter shared, the member's
    `[model]` config (its `mask` and `layer_masks`) and that mask schedule on every call, and of
    each discrete modality only the member's own vocabulary (`vocab`: name -> size; another
    member's task may have added ids to a shared modality).

    Tasks use it exactly as a `Transformer` (call it, `decode` with a cache, `output` ...)."""

    def __init__(self, core: Transformer, cfg: ModelConfig, vocab: dict[str, int] | None = None) -> None:
        self.core, self.cfg, self.vocab = core, cfg, vocab or {}
        self.masks = MaskSchedule.parse(cfg.mask, cfg.layer_masks)

    def output(self, name: str, hidden: Tensor, ts: TokenSet) -> Tensor:
        out = self.core.output(name, hidden, ts)
        return out[..., : self.vocab[name]] if name in self.vocab else out

    def __call__(self, ts: TokenSet, context: TokenSet | None = None, cache: DecodeCache | None = None) -> Tensor:
        return self.core(ts, context, cache, masks=self.masks)

    def encode(self, ts: TokenSet) -> tuple[Tensor, Tensor]:
        return self.core.encode(ts, self.masks)

    def decode(self, ts: TokenSet, memory=None, cache: DecodeCache | None = None) -> Tensor:
        return self.core.decode(ts, memory, cache, self.masks)

    def __getattr__(self, name: str):
        return getattr(self.core, name)
