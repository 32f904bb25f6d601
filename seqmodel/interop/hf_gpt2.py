"""GPT-2-family models in and out of HuggingFace `transformers`: pure mappings of names, shapes
and settings.

In: ``[train] init_from = "hf:DIR_OR_NAME"`` (`hf_origin`) maps the model's ``config.json`` to
`[model]` keys, reads every weight the mapping needs from the weights file itself
(``model.safetensors``, or ``pytorch_model.bin`` through ``torch.load(weights_only=True)``), and
hands its tokenizer over as a ``tokenizer.json``, which any tokenizer plugin declaring the
"hf_tokenizer" capability reads. Out: `export_hf` writes an already loaded pipeline as a
directory that `AutoModelForCausalLM`, `AutoTokenizer` and the ``text-generation`` pipeline
load, for decoder-only language models whose shape GPT-2 can express (one-line errors say what
cannot be). Reading a run directory and choosing the output folder are the caller's job.

GPT-2's block is this framework's default block: pre-norm LayerNorm with biases, one fused qkv
projection, a GELU MLP (``gelu_new`` is ``[model] mlp = "gelu_tanh"``), learned 1-D positions, a
tied output head. Its `Conv1D` layers store weights as (in, out): the transpose of `nn.Linear`.
Exporting folds what GPT-2 lacks into what it has: the learned modality vector (one modality, so
one constant added to every token) into the position table, missing biases as zeros.

Reference: Radford et al., "Language Models are Unsupervised Multitask Learners", 2019.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from seqmodel.capabilities import declared
from seqmodel.errors import UserError
from seqmodel.interop.origin import Origin, TokenizerState
from seqmodel.masks import MaskSchedule, is_plain_causal
from seqmodel.segments import dense_set

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
"""HF `activation_function` -> `[model] mlp`."""
EXPORT_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu"}

BLOCK = (("ln_1", "ln_attn", False), ("attn.c_attn", "attn.qkv", True), ("attn.c_proj", "attn.proj", True),
         ("ln_2", "ln_mlp", False), ("mlp.c_fc", "mlp.fc", True), ("mlp.c_proj", "mlp.proj", True))
"""(HF module, our module, a Conv1D whose weight is transposed) in each block."""

TOKENIZER_FILE = "tokenizer.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLED, PICKLED_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
HUB_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
             "merges.txt", SAFETENSORS, SAFETENSORS_INDEX, "model-*.safetensors"]
"""What a hub model's import downloads (its safetensors weights, never a pickle)."""


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("GPT-2 import and export need the `transformers` package: "
                        "pip install 'seqmodel[export]' (or pip install transformers)") from None
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
    check_numbers(config, where)
    D = config.n_embd
    inner = config.n_inner or 4 * D
    if int(inner / D * D) != inner:
        raise UserError(f"{where}: n_inner {inner} is not a multiple [model] mlp_ratio can express for n_embd {D}")
    return {"arch": "decoder", "layers": config.n_layer, "d_model": D, "heads": config.n_head, "mlp_ratio": inner / D,
            "context": config.n_positions, "bias": True, "tie_embeddings": bool(config.tie_word_embeddings),
            "modality_embedding": False, "norm": "layernorm", "norm_eps": config.layer_norm_epsilon,
            "mlp": ACTIVATIONS[act], "mask": "causal", "layer_masks": [], "kv_heads": 0, "qk_norm": False,
            "embed_norm": False}


def check_numbers(config, where: str) -> None:
    """A one-line error for a config.json size that is not a positive integer, an epsilon that is
    not a positive number, or a tie_word_embeddings that is not a boolean."""
    def positive(value, kinds) -> bool:
        return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value) and value > 0

    for key in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size", "n_inner"):
        value = getattr(config, key, None)
        if not (key == "n_inner" and value is None) and not positive(value, int):
            raise UserError(f"{where}: config.json {key} = {value!r}; expected a positive integer")
    if not positive(config.layer_norm_epsilon, (int, float)):
        raise UserError(f"{where}: config.json layer_norm_epsilon = {config.layer_norm_epsilon!r}; expected a positive number")
    if not isinstance(config.tie_word_embeddings, bool):
        raise UserError(f"{where}: config.json tie_word_embeddings = {config.tie_word_embeddings!r}; expected true or false")


def hf_origin(spec: str, modalities: tuple[str, ...]) -> Origin:
    """A GPT-2-family HuggingFace model as a warm-start source: its `[model]` table, its tokenizer
    as a ``tokenizer.json`` (for any tokenizer plugin declaring "hf_tokenizer") and its weights,
    read from the weights file itself when `Origin.load` is called."""
    if len(modalities) != 1:
        raise UserError(f"{spec}: a GPT-2 model reads one text modality; the recipe has {len(modalities)} tokenizers")
    tf = _transformers()
    folder = model_folder(spec)
    if not (folder / "config.json").is_file():
        raise UserError(f"{spec}: no config.json in {folder}")
    try:
        with quiet(tf):
            config = tf.AutoConfig.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 -- transformers raises many types for a damaged or foreign config.json
        raise UserError(f"{spec}: cannot read config.json: {first_line(err)}") from None
    table = model_table(config, spec)
    state = tempfile.TemporaryDirectory(prefix="seqmodel-hf-tokenizer-")
    save_tokenizer_json(spec, folder, Path(state.name) / TOKENIZER_FILE)
    modality = modalities[0]
    tokenizer = TokenizerState(Path(state.name), capability="hf_tokenizer", what="a HuggingFace tokenizer.json")
    name = spec.removeprefix("hf:")
    record = {"init_from": spec, "hf": str(folder) if Path(name).expanduser().is_dir() else name,
              "model_type": config.model_type, "commit": getattr(config, "_commit_hash", None), "transformers": tf.__version__}
    return Origin(spec, table, {modality: tokenizer}, lambda: gpt2_weights(spec, folder, config, table, modality), record, keep=state)


def first_line(err: BaseException) -> str:
    """The start of an error's message on one line (a first line ending in ':' with the next)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]


def model_folder(spec: str) -> Path:
    """The local folder of `hf:DIR_OR_NAME`: DIR itself, or a hub model's files downloaded into
    the HuggingFace cache (config, tokenizer and safetensors weights only)."""
    name = spec.removeprefix("hf:")
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise UserError(f"{spec}: a file, not a model directory")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name:
        raise UserError(f"{spec}: no such model directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as err:  # noqa: BLE001 -- network, authentication, unknown repository: huggingface_hub's own types
        raise UserError(f"{spec}: cannot download the model from the HuggingFace hub: {first_line(err)}") from None


def save_tokenizer_json(spec: str, folder: Path, path: Path) -> None:
    """The model's tokenizer as a `tokenizers` ``tokenizer.json`` at `path` (`AutoTokenizer`
    converts one that has only ``vocab.json`` and ``merges.txt``)."""
    tf = _transformers()
    if not ((folder / TOKENIZER_FILE).is_file() or all((folder / f).is_file() for f in ("vocab.json", "merges.txt"))):
        raise UserError(f"{spec}: no tokenizer in {folder} ({TOKENIZER_FILE}, or vocab.json and merges.txt)")
    try:
        with quiet(tf):
            tok = tf.AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 -- missing or damaged tokenizer files raise many types in transformers
        raise UserError(f"{spec}: cannot read the tokenizer: {first_line(err)}") from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{spec}: the tokenizer has no `tokenizers` (fast) form, which the recipe's tokenizer would read")
    backend.save(str(path))


def gpt2_weights(spec: str, folder: Path, config, table: dict, modality: str) -> dict[str, Tensor]:
    """Every weight the mapping needs, from the file (one-line errors for a missing tensor, a
    non-float dtype, a shape other than the config's or a non-finite value), under our names."""
    theirs, where = read_weights(spec, folder)
    shapes = expected_shapes(config)
    out = {}
    for name, ours, conv in pairs(config.n_layer, modality, table["tie_embeddings"]):
        tensor = theirs.get(name, theirs.get(name.removeprefix("transformer.")))
        if tensor is None:
            raise UserError(f"{where}: no tensor {name!r}, which a GPT-2 of this config.json has "
                            f"(the file has {len(theirs)} tensors; its weights are never replaced by random ones)")
        if not tensor.is_floating_point():
            raise UserError(f"{where}: tensor {name!r} is {str(tensor.dtype).removeprefix('torch.')}; GPT-2 weights are floating point")
        if tuple(tensor.shape) != shapes[name]:
            raise UserError(f"{where}: tensor {name!r} has shape {tuple(tensor.shape)}; config.json gives {shapes[name]}")
        tensor = tensor.float()
        if not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{where}: tensor {name!r} has non-finite values (NaN or infinity)")
        out[ours] = (tensor.t() if conv else tensor).contiguous()
    return out


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """The shape of every GPT-2 weight for `config` (Conv1D weights are (in, out))."""
    D, V, I = config.n_embd, config.vocab_size, config.n_inner or 4 * config.n_embd
    module = {"ln_1": (D,), "ln_2": (D,), "attn.c_attn": (D, 3 * D), "attn.c_proj": (D, D), "mlp.c_fc": (D, I), "mlp.c_proj": (I, D)}
    out = {"transformer.wte.weight": (V, D), "transformer.wpe.weight": (config.n_positions, D), "lm_head.weight": (V, D),
           "transformer.ln_f.weight": (D,), "transformer.ln_f.bias": (D,)}
    for i in range(config.n_layer):
        for name, shape in module.items():
            out[f"transformer.h.{i}.{name}.weight"] = shape
            out[f"transformer.h.{i}.{name}.bias"] = shape[-1:]
    return out


def read_weights(spec: str, folder: Path) -> tuple[dict[str, Tensor], str]:
    """The tensors of the folder's weights file(s) and the name to give in messages:
    ``model.safetensors`` (or its shards), else ``pytorch_model.bin`` (or its shards) read with
    ``torch.load(weights_only=True)``; nothing is ever unpickled beyond plain tensors."""
    for single, index, reader in ((SAFETENSORS, SAFETENSORS_INDEX, _read_safetensors), (PICKLED, PICKLED_INDEX, _read_pickled)):
        if (folder / single).exists():
            return reader(folder / single), str(folder / single)
        if (folder / index).exists():
            tensors = {}
            for shard in _shards(folder / index):
                tensors |= reader(shard)
            return tensors, str(folder / index)
    raise UserError(f"{spec}: no weights file ({SAFETENSORS} or {PICKLED}) in {folder}")


def _shards(index: Path) -> list[Path]:
    """The shard files an index's ``weight_map`` names (each inside the index's folder)."""
    try:
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        assert names and all(isinstance(n, str) and n and Path(n).name == n for n in names)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, AssertionError):
        raise UserError(f"{index}: not a weight index (a JSON object whose weight_map names shard files beside it)") from None
    return [index.parent / n for n in names]


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path}: missing or not a file")
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 -- safetensors raises its own error types for every kind of bad file
        raise UserError(f"{path}: not a readable safetensors file: {first_line(err)}") from None


def _read_pickled(path: Path) -> dict[str, Tensor]:
    """A PyTorch state dict file, through ``torch.load(weights_only=True)`` only."""
    if not path.is_file():
        raise UserError(f"{path}: missing or not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- a refused pickle, a truncated zip, garbage: torch's message would suggest unpickling
        raise UserError(f"{path}: not a file of plain tensors that torch.load(weights_only=True) reads; seqmodel never "
                        f"unpickles other objects (convert the weights to {SAFETENSORS})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UserError(f"{path}: not a state dict (a mapping of tensor names to tensors)")
    return state


# -- out ---------------------------------------------------------------------------------------
def export_problem(pipe) -> str | None:
    """Why a run's model cannot be written as a GPT-2 (None when it can)."""
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


def check_exportable(pipe, where: str = "export --format hf") -> None:
    """A one-line error (starting with `where`) when the model cannot be written as GPT-2."""
    why = export_problem(pipe)
    if why:
        raise UserError(f"{where}: cannot write this model as GPT-2: {why}")


def separator_id(tok) -> int | None:
    """The id a tokenizer puts between documents (its `separator` capability), or None."""
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


def generation_config(pipe):
    """``generation_config.json``: `generate` (and the text-generation pipeline, whose own default
    asks for 256 new tokens) stops when prompt and new tokens fill the context, where GPT-2's
    position table ends. An explicit ``max_new_tokens`` takes precedence in transformers."""
    tf = _transformers()
    (spec,) = pipe.module.core.specs.values()
    eot = separator_id(pipe.tokenizers[spec.name])
    return tf.GenerationConfig(max_length=pipe.recipe.model.context, bos_token_id=eot, eos_token_id=eot)


def save_tokenizer(pipe, out: Path) -> None:
    """The run's tokenizer as a `PreTrainedTokenizerFast` directory (tokenizer.json, tokenizer_config.json)."""
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


def export_hf(pipe, out: Path) -> dict:
    """Write `pipe` (weights loaded, LoRA merged) as a HuggingFace GPT-2 directory into the
    existing empty folder `out`; returns a check of the result: the largest logit difference
    between the pipeline's model and the written one on a probe sequence."""
    check_exportable(pipe)
    tf = _transformers()
    model = tf.GPT2LMHeadModel(hf_config(pipe))
    missing, unexpected = model.load_state_dict(hf_state(pipe), strict=False)
    missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias")) and k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GPT-2 weight mapping incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.generation_config = generation_config(pipe)
    with quiet(tf):
        model.save_pretrained(str(out))
        save_tokenizer(pipe, out)
    context = pipe.recipe.model.context
    return {"checked_with": "transformers", "max_abs_difference": probe_difference(pipe, out),
            "probe": "32 random ids (logits)",
            "note": f"the model reads at most {context} tokens: generation_config.json stops transformers' generate "
                    f"there (prompt + new tokens = {context}); docs/export.md shows how to generate longer"}


@torch.no_grad()
def probe_difference(pipe, out: Path) -> float:
    """Largest |logit| difference between the pipeline's model and the written one on a fixed sequence."""
    tf = _transformers()
    core = pipe.module.core.eval()
    (spec,) = core.specs.values()
    ids = torch.randint(spec.vocab_size, (1, min(pipe.recipe.model.context, 32)), generator=torch.Generator().manual_seed(0))
    batch = dense_set(spec.name, ids=ids)
    ours = core.output(spec.name, core(batch), batch)
    with quiet(tf):
        theirs = tf.AutoModelForCausalLM.from_pretrained(str(out)).eval()(ids).logits
    return float((ours - theirs).abs().max())


class quiet:
    """transformers' messages and progress bars off for the block (writing and reading back our own files)."""

    def __init__(self, tf) -> None:
        self.logging = tf.utils.logging

    def __enter__(self) -> None:
        self.level, self.bars = self.logging.get_verbosity(), self.logging.is_progress_bar_enabled()
        self.logging.set_verbosity_error()
        self.logging.disable_progress_bar()

    def __exit__(self, *exc) -> None:
        self.logging.set_verbosity(self.level)
        if self.bars:
            self.logging.enable_progress_bar()
