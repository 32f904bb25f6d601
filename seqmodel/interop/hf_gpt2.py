"""GPT-2-family models in and out of HuggingFace `transformers`.

In: ``[train] init_from = "hf:DIR_OR_NAME"`` reads the model with `from_pretrained` (a local
directory offline, a hub name with internet), maps its configuration to `[model]` keys and its
weights to this framework's names, and its tokenizer (``tokenizer.json``, through HF
`tokenizers`) becomes the state of the recipe's `bpe` tokenizer. Out: `export_hf` writes a run
as a directory that `AutoModelForCausalLM` and `AutoTokenizer` load, for decoder-only language
models whose shape GPT-2 can express (one-line errors say what cannot be).

GPT-2's block is this framework's default block: pre-norm LayerNorm with biases, one fused qkv
projection, a GELU MLP (``gelu_new`` is ``[model] mlp = "gelu_tanh"``), learned 1-D positions, a
tied output head. Its `Conv1D` layers store weights as (in, out): the transpose of `nn.Linear`.
Exporting folds what GPT-2 lacks into what it has: the learned modality vector (one modality, so
one constant added to every token) into the position table, missing biases as zeros.

Reference: Radford et al., "Language Models are Unsupervised Multitask Learners", 2019.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from seqmodel.errors import UserError

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
"""HF `activation_function` -> `[model] mlp`."""
EXPORT_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu"}

BLOCK = (("ln_1", "ln_attn", False), ("attn.c_attn", "attn.qkv", True), ("attn.c_proj", "attn.proj", True),
         ("ln_2", "ln_mlp", False), ("mlp.c_fc", "mlp.fc", True), ("mlp.c_proj", "mlp.proj", True))
"""(HF module, our module, a Conv1D whose weight is transposed) in each block."""


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("GPT-2 import and export need the `transformers` package: "
                        "pip install 'seqmodel[export]' (or pip install transformers)") from None
    transformers.logging.set_verbosity_error()
    return transformers


def pairs(layers: int, modality: str, tied: bool) -> list[tuple[str, str, bool]]:
    """(HF name, our `TrainModule` name, transposed) for every weight of a GPT-2 of `layers` blocks."""
    out = [("transformer.wte.weight", f"core.adapters.{modality}.weight", False),
           ("transformer.wpe.weight", f"core.positions.{modality}.tables.0.weight", False)]
    for i in range(layers):
        for theirs, ours, conv in BLOCK:
            out.append((f"transformer.h.{i}.{theirs}.weight", f"core.decoder.blocks.{i}.{ours}.weight", conv))
            out.append((f"transformer.h.{i}.{theirs}.bias", f"core.decoder.blocks.{i}.{ours}.bias", False))
    out += [("transformer.ln_f.weight", "core.decoder.ln_f.weight", False), ("transformer.ln_f.bias", "core.decoder.ln_f.bias", False)]
    return out if tied else out + [("lm_head.weight", f"core.heads.{modality}.weight", False)]


# -- in ----------------------------------------------------------------------------------------
def model_table(config, where: str) -> dict:
    """`[model]` keys of a `GPT2Config` (a one-line error for what this framework cannot express)."""
    if config.model_type != "gpt2":
        raise UserError(f"{where}: a {config.model_type!r} model; init_from hf: reads GPT-2-family models (model_type 'gpt2')")
    act = config.activation_function
    if act not in ACTIVATIONS:
        raise UserError(f"{where}: activation_function {act!r} has no [model] mlp (known: {', '.join(ACTIVATIONS)})")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
        if getattr(config, key, want) != want:
            raise UserError(f"{where}: {key} = {getattr(config, key)} is not supported (GPT-2 uses {want})")
    D = config.n_embd
    inner = config.n_inner or 4 * D
    if int(inner / D * D) != inner:
        raise UserError(f"{where}: n_inner {inner} is not a multiple [model] mlp_ratio can express for n_embd {D}")
    return {"arch": "decoder", "layers": config.n_layer, "d_model": D, "heads": config.n_head, "mlp_ratio": inner / D,
            "context": config.n_positions, "bias": True, "tie_embeddings": bool(config.tie_word_embeddings),
            "modality_embedding": False, "norm": "layernorm", "norm_eps": config.layer_norm_epsilon,
            "mlp": ACTIVATIONS[act], "mask": "causal", "layer_masks": [], "kv_heads": 0, "qk_norm": False,
            "embed_norm": False}


def hf_origin(spec: str, modalities: tuple[str, ...]):
    """A GPT-2-family HuggingFace model as a warm-start source (see `seqmodel.warm_start.Origin`)."""
    from seqmodel.training.warm_start import Origin

    name = spec.removeprefix("hf:")
    tf = _transformers()
    if len(modalities) != 1:
        raise UserError(f"{spec}: a GPT-2 model reads one text modality; the recipe has {len(modalities)} tokenizers")
    local = Path(name).expanduser()
    if not local.is_dir() and (local.exists() or name.startswith((".", "/", "~"))):
        raise UserError(f"{spec}: no such model directory")
    source = str(local) if local.is_dir() else name
    try:
        config = tf.AutoConfig.from_pretrained(source)
        tok = tf.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise UserError(f"{spec}: cannot load a HuggingFace model and tokenizer: {str(err).splitlines()[0]}") from None
    table = model_table(config, spec)
    state = tempfile.TemporaryDirectory(prefix="seqmodel-hf-tokenizer-")
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{spec}: the tokenizer has no `tokenizers` (fast) form to become a bpe tokenizer state")
    backend.save(str(Path(state.name) / "tokenizer.json"))
    modality = modalities[0]

    def load() -> dict[str, Tensor]:
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise UserError(f"{spec}: cannot load the HuggingFace weights: {str(err).splitlines()[0]}") from None
        theirs = model.state_dict()
        missing = [t for t, _, _ in pairs(config.n_layer, modality, table["tie_embeddings"]) if t not in theirs]
        if missing:
            raise UserError(f"{spec}: not a GPT-2 checkpoint (no weight {missing[0]!r})")
        return {ours: (theirs[t].t() if conv else theirs[t]).float().contiguous()
                for t, ours, conv in pairs(config.n_layer, modality, table["tie_embeddings"])}

    record = {"init_from": spec, "hf": source, "model_type": config.model_type,
              "commit": getattr(config, "_commit_hash", None), "transformers": tf.__version__}
    return Origin(spec, table, {modality: ("bpe", Path(state.name))}, load, record, keep=state)


# -- out ---------------------------------------------------------------------------------------
def export_problem(pipe) -> str | None:
    """Why a run's model cannot be written as a GPT-2 (None when it can)."""
    from seqmodel.masks import MaskSchedule, is_plain_causal

    m, core = pipe.recipe.model, pipe.module.core
    if m.arch != "decoder":
        return f"a {m.arch!r} model; GPT-2 is a decoder"
    if len(core.specs) != 1 or pipe.module.head is not None:
        return "GPT-2 models one token stream with its own output head; this model has modalities " \
               f"{', '.join(core.specs)}{' and a task head' if pipe.module.head is not None else ''}"
    (spec,) = core.specs.values()
    if not spec.discrete or spec.name not in core.heads:
        return f"modality {spec.name!r} is not a discrete one with an output head"
    if spec.position not in ("learned", "none"):
        return f"{spec.position} positions; GPT-2 has a learned table of 1-D positions"
    if core.positions[spec.name].tables and core.positions[spec.name].tables[0].num_embeddings != m.context:
        return "a position table of another size than [model] context"
    for ok, why in ((m.norm == "layernorm", f"norm = {m.norm!r}; GPT-2 uses LayerNorm"),
                    (m.mlp in EXPORT_ACTIVATION, f"mlp = {m.mlp!r}; GPT-2 has a GELU MLP (gelu or gelu_tanh)"),
                    (not m.qk_norm, "qk_norm; GPT-2 has no query-key norm"),
                    (m.kv_heads in (0, m.heads), "grouped-query attention (kv_heads); GPT-2 has one K/V head per head"),
                    (not m.embed_norm, "embed_norm; GPT-2 has no embedding norm")):
        if not ok:
            return why
    schedule = MaskSchedule.parse(m.mask, m.layer_masks)
    if not all(is_plain_causal(mask) for mask in schedule.masks):
        return f"mask {', '.join(map(str, schedule.masks))}; GPT-2 attends causally in every layer"
    return None


def hf_state(pipe) -> dict[str, Tensor]:
    """The run's weights under GPT-2's names (modality vector folded in, absent biases zero)."""
    m, core = pipe.recipe.model, pipe.module.core
    (name,) = core.specs
    ours = {k: v.detach().float().cpu() for k, v in pipe.module.state_dict().items()}
    D = m.d_model
    wpe = ours.get(f"core.positions.{name}.tables.0.weight", torch.zeros(m.context, D))
    if core.modality_emb is not None:
        wpe = wpe + ours["core.modality_emb.weight"][core.modality_code[name]]
    ours[f"core.positions.{name}.tables.0.weight"] = wpe
    out = {}
    for theirs, key, conv in pairs(m.layers, name, m.tie_embeddings):
        if key not in ours:  # bias = false: GPT-2's biases are zeros
            weight = ours[key.replace(".bias", ".weight")]
            out[theirs] = torch.zeros(weight.shape[0])
            continue
        out[theirs] = ours[key].t().contiguous() if conv else ours[key]
    return out


def separator_id(tok) -> int | None:
    """The id a tokenizer puts between documents (its `separator` capability), or None."""
    from seqmodel.plugin import declared

    return tok.eot_id if "separator" in declared(tok) else None


def hf_config(pipe):
    tf = _transformers()
    m, core = pipe.recipe.model, pipe.module.core
    (spec,) = core.specs.values()
    eot = separator_id(pipe.tokenizers[spec.name])
    return tf.GPT2Config(vocab_size=spec.vocab_size, n_positions=m.context, n_embd=m.d_model, n_layer=m.layers,
                         n_head=m.heads, n_inner=int(m.mlp_ratio * m.d_model), activation_function=EXPORT_ACTIVATION[m.mlp],
                         resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout, layer_norm_epsilon=m.norm_eps,
                         tie_word_embeddings=m.tie_embeddings, bos_token_id=eot, eos_token_id=eot,
                         architectures=["GPT2LMHeadModel"])


def save_tokenizer(pipe, out: Path) -> None:
    """The run's tokenizer as a `PreTrainedTokenizerFast` directory (tokenizer.json, tokenizer_config.json)."""
    from seqmodel.plugin import declared

    tf = _transformers()
    (name,) = pipe.module.core.specs
    tok = pipe.tokenizers[name]
    if "hf_tokenizer" not in declared(tok):
        raise UserError(f"export --format hf: the {pipe.recipe.tokenizers[name].name!r} tokenizer has no HuggingFace "
                        "`tokenizers` form (it does not declare the hf_tokenizer capability)")
    eot = separator_id(tok)
    backend = tok.hf_tokenizer()
    special = {}
    if eot is not None:
        text = backend.id_to_token(eot)
        special = {"bos_token": text, "eos_token": text, "unk_token": text}
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                      model_max_length=pipe.recipe.model.context, **special)
    fast.save_pretrained(str(out))


def export_hf(run_dir: Path, out: Path) -> dict:
    """Write run `run_dir` as a HuggingFace GPT-2 directory `out`; returns a check of the result:
    the largest logit difference between the run and the written model on a probe sequence."""
    from seqmodel import api
    from seqmodel.model.lora import merge

    tf = _transformers()
    run = api.load(run_dir, device="cpu")
    pipe = run.pipeline
    why = export_problem(pipe)
    if why:
        raise UserError(f"{run_dir}: export --format hf: cannot write this model as GPT-2: {why}")
    if pipe.recipe.train.lora.rank:
        merge(pipe.module.core)
    model = tf.GPT2LMHeadModel(hf_config(pipe))
    missing, unexpected = model.load_state_dict(hf_state(pipe), strict=False)
    missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias")) and k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GPT-2 weight mapping incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    save_tokenizer(pipe, out)
    (out / "seqmodel.json").write_text(json.dumps({"run": str(run_dir), "format": "hf"}, indent=1))
    return {"checked_with": "transformers", "max_abs_difference": probe_difference(pipe, out),
            "probe": "32 random ids (logits)"}


@torch.no_grad()
def probe_difference(pipe, out: Path) -> float:
    """Largest |logit| difference between the run's model and the written one on a fixed sequence."""
    from seqmodel.segments import dense_set

    tf = _transformers()
    core = pipe.module.core.eval()
    (spec,) = core.specs.values()
    ids = torch.randint(spec.vocab_size, (1, min(pipe.recipe.model.context, 32)), generator=torch.Generator().manual_seed(0))
    batch = dense_set(spec.name, ids=ids)
    ours = core.output(spec.name, core(batch), batch)
    theirs = tf.AutoModelForCausalLM.from_pretrained(str(out)).eval()(ids).logits
    return float((ours - theirs).abs().max())

