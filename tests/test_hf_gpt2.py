"""GPT-2 in and out of HuggingFace transformers: `init_from = "hf:DIR"` and `export --format hf`.

The reference is transformers itself: a small GPT-2 with random weights (every LayerNorm and bias
perturbed, so a dropped or transposed weight shows) saved with `save_pretrained`, its tokenizer a
byte-level BPE trained here.
"""

from pathlib import Path

import pytest
import torch
from conftest import cli, make_text, tiny_char_recipe

transformers = pytest.importorskip("transformers")
import seqmodel  # noqa: E402
from seqmodel.generate import generate  # noqa: E402
from seqmodel.segments import Segment, dense_set  # noqa: E402

CONTEXT = 48


def hf_tokenizer(text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    return transformers.GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                          unk_token="<|endoftext|>")


def save_gpt2(directory: Path, activation: str, tied: bool = True, seed: int = 0) -> Path:
    tok = hf_tokenizer(make_text(800, seed=3))
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4,
                                     activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     layer_norm_epsilon=1e-5, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


def bpe_recipe(tmp: Path, corpus: Path, init_from: str) -> Path:
    path = tmp / "from_hf.toml"
    path.write_text(f"""
[train]
init_from = "{init_from}"
steps = 1
lr = 0.0
min_lr = 0.0
warmup = 0
batch_size = 2
eval_every = 1
eval_batches = 1
threads = 1
[data]
source = "text"
paths = ["{corpus}"]
[tokenizer]
kind = "bpe"
[task]
kind = "lm"
[sample]
num_samples = 0
""")
    return path


def imported(tmp: Path, corpus: Path, hf_dir: Path):
    run = tmp / "run"
    cli("run", bpe_recipe(tmp, corpus, f"hf:{hf_dir}"), "--out", run, "--no-progress")
    return seqmodel.load(run, device="cpu"), run


def logits(run, ids: torch.Tensor) -> torch.Tensor:
    core = run.model.core
    batch = dense_set("text", ids=ids)
    with torch.no_grad():
        return core.output("text", core(batch), batch)


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_a_gpt2_imports_with_the_same_logits_and_greedy_generation(tmp_path, corpus, activation):
    hf_dir = save_gpt2(tmp_path / "gpt2", activation)
    run, run_dir = imported(tmp_path, corpus, hf_dir)
    assert run.pipeline.recipe.model.mlp == {"gelu_new": "gelu_tanh", "gelu": "gelu"}[activation]
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    text = "The king doth speak; thou art not my lord.\nJULIET: Sweet night!"
    ours_ids = run.pipeline.tokenizers["text"].encode(text).ids
    assert ours_ids.tolist() == tok(text)["input_ids"]  # the tokenizer came over too
    ids = torch.randint(len(tok), (2, CONTEXT), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = reference(ids).logits
    assert (logits(run, ids) - theirs).abs().max() < 1e-5
    prompt = ours_ids[None, :8]
    with torch.no_grad():
        hf_out = reference.generate(prompt, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0,
                                    attention_mask=torch.ones_like(prompt))[0, 8:].tolist()
    ours = generate(run.model.core, [Segment("text", ids=prompt[0])], 24, lambda lg: int(lg.argmax()))
    assert ours == hf_out
    record = __import__("json").loads((run_dir / "run.json").read_text())["init_from"]
    assert record["hf"] == str(hf_dir) and record["model_type"] == "gpt2"


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_export_hf_gives_transformers_the_same_logits(tmp_path, corpus, activation):
    hf_dir = save_gpt2(tmp_path / "gpt2", activation)
    run, run_dir = imported(tmp_path, corpus, hf_dir)
    out = tmp_path / "exported"
    done = cli("export", run_dir, "--format", "hf", "--out", out)
    assert "transformers reads it back" in done.stdout
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert model.config.activation_function == activation
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "Good sir, what love hath the queen?"
    assert tok(text)["input_ids"] == run.pipeline.tokenizers["text"].encode(text).ids.tolist()
    assert tok.decode(tok(text)["input_ids"]) == text
    ids = torch.randint(len(tok), (2, CONTEXT), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids).logits - logits(run, ids)).abs().max() < 1e-5


@pytest.mark.parametrize("settings", [{}, {"model.tie_embeddings": "false", "model.bias": "true"}])
def test_a_char_run_exports_as_gpt2(tmp_path, corpus, settings):
    """bias = false (zeros in GPT-2), the learned modality vector (folded into the position table),
    an untied head; the char vocabulary as a `tokenizers` WordLevel model."""
    recipe = tiny_char_recipe(tmp_path, corpus, steps=6)
    run_dir = tmp_path / "char"
    cli("run", recipe, "--out", run_dir, "--no-progress", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")])
    run = seqmodel.load(run_dir, device="cpu")
    assert run.model.core.modality_emb.weight.abs().sum() > 0  # trained away from its zero start
    cli("export", run_dir, "--format", "hf", "--out", tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "Come, good night!\nKING: Thou art"
    ids = run.pipeline.tokenizers["text"].encode(text).ids
    assert tok(text)["input_ids"] == ids.tolist() and tok.decode(ids.tolist()) == text
    with torch.no_grad():
        assert (model(ids[None]).logits - logits(run, ids[None])).abs().max() < 1e-5


@pytest.mark.parametrize("setting, reason", [
    ("tokenizer.position=\"rotary\"", "rotary positions"),
    ("model.norm=\"rmsnorm\"", "rmsnorm"),
    ("model.mlp=\"swiglu\"", "swiglu"),
    ("model.mask=\"sliding_window:8\"", "causally"),
    ("model.kv_heads=1", "kv_heads"),
])
def test_export_hf_refuses_what_gpt2_cannot_express(tmp_path, corpus, setting, reason):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1)
    run_dir = tmp_path / "r"
    cli("run", recipe, "--out", run_dir, "--no-progress", "--set", setting)
    done = cli("export", run_dir, "--format", "hf", check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert "cannot write this model as GPT-2" in done.stderr and reason in done.stderr


def test_init_from_hf_errors_are_one_line(tmp_path, corpus):
    done = cli("run", bpe_recipe(tmp_path, corpus, f"hf:{tmp_path / 'nothing'}"), "--out", tmp_path / "r",
               "--no-progress", check=False)
    assert done.returncode == 2 and "no such model directory" in done.stderr and done.stderr.count("\n") == 1
    hf_dir = save_gpt2(tmp_path / "gpt2", "gelu_new")
    recipe = bpe_recipe(tmp_path, corpus, f"hf:{hf_dir}")
    done = cli("run", recipe, "--out", tmp_path / "r2", "--no-progress", "--set", 'tokenizer.kind="char"', check=False)
    assert done.returncode == 2 and "a 'BPE' tokenizer" in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_init_from_hf_needs_a_tokenizer_that_reads_tokenizer_json(tmp_path, corpus):
    """The HF origin names no plugin: any tokenizer declaring "hf_tokenizer" may take the
    tokenizer.json; one that does not is a one-line error naming the recipe key."""
    hf_dir = save_gpt2(tmp_path / "gpt2", "gelu_new")
    done = cli("check", bpe_recipe(tmp_path, corpus, f"hf:{hf_dir}"), "--set", 'tokenizer.kind="kmer"', check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "[tokenizers.text] kind: 'kmer'" in done.stderr and "'hf_tokenizer' capability" in done.stderr


def test_a_char_run_exported_as_gpt2_imports_back_into_a_char_recipe(tmp_path, corpus):
    """The char tokenizer reads the tokenizer.json its export wrote (capability "hf_tokenizer"):
    the round trip run -> GPT-2 -> run keeps the vocabulary and the logits."""
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4)
    cli("run", recipe, "--out", tmp_path / "char", "--no-progress")
    cli("export", tmp_path / "char", "--format", "hf", "--out", tmp_path / "hf")
    cli("run", recipe, "--out", tmp_path / "back", "--no-progress", "--set", f'train.init_from="hf:{tmp_path / "hf"}"',
        "--set", "train.steps=1", "--set", "train.lr=0.0", "--set", "train.min_lr=0.0", "--set", "train.warmup=0")
    source, back = seqmodel.load(tmp_path / "char", device="cpu"), seqmodel.load(tmp_path / "back", device="cpu")
    assert back.pipeline.tokenizers["text"].chars == source.pipeline.tokenizers["text"].chars
    ids = source.pipeline.tokenizers["text"].encode("Good night, sweet lord!").ids[None]
    assert (logits(back, ids) - logits(source, ids)).abs().max() < 1e-5


def test_export_of_what_is_not_a_run_is_a_one_line_error(tmp_path):
    for target in (tmp_path / "missing", tmp_path):
        done = cli("export", target, "--format", "hf", check=False)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    done = cli("export", tmp_path, "--format", "tflite", check=False)
    assert done.returncode == 2 and "invalid choice" in done.stderr


# -- an import takes every weight from the file, or refuses in one line --------------------------
def damaged(hf_dir: Path, edit) -> Path:
    """`hf_dir` with its model.safetensors rewritten by `edit(tensors)` (which may also replace the file)."""
    from safetensors.torch import load_file, save_file

    path = hf_dir / "model.safetensors"
    tensors = load_file(str(path))
    if edit(tensors, hf_dir) is not False:
        save_file(tensors, str(path))
    return hf_dir


def _nan(t, d):
    t["transformer.h.1.ln_2.weight"][3] = float("nan")


def _inf(t, d):
    t["transformer.wpe.weight"][0, 0] = float("inf")


def _truncate(t, d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return False


def _no_weights(t, d):
    (d / "model.safetensors").unlink()
    return False


DAMAGE = {
    "a missing tensor": (lambda t, d: t.pop("transformer.h.1.mlp.c_fc.weight"), "no tensor 'transformer.h.1.mlp.c_fc.weight'"),
    "a renamed tensor": (lambda t, d: t.__setitem__("transformer.h.0.attn.qkv.weight", t.pop("transformer.h.0.attn.c_attn.weight")),
                         "no tensor 'transformer.h.0.attn.c_attn.weight'"),
    "no weights file": (_no_weights, "no weights file"),
    "integer weights": (lambda t, d: t.__setitem__("transformer.ln_f.bias", t["transformer.ln_f.bias"].to(torch.int32)),
                        "'transformer.ln_f.bias' is int32"),
    "bool weights": (lambda t, d: t.__setitem__("transformer.wte.weight", t["transformer.wte.weight"] > 0),
                     "'transformer.wte.weight' is bool"),
    "another shape": (lambda t, d: t.__setitem__("transformer.h.0.mlp.c_proj.bias", torch.zeros(7)), "has shape (7,)"),
    "a NaN": (_nan, "'transformer.h.1.ln_2.weight' has non-finite values"),
    "an infinity": (_inf, "'transformer.wpe.weight' has non-finite values"),
    "a truncated file": (_truncate, "not a readable safetensors file"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_gpt2_weights_file_is_a_one_line_error_in_check_and_run(tmp_path, corpus, case):
    """transformers' own loader fills what the file lacks with random weights (and casts any dtype);
    the import reads the file itself and names the problem."""
    edit, message = DAMAGE[case]
    hf_dir = damaged(save_gpt2(tmp_path / "gpt2", "gelu_new"), edit)
    recipe = bpe_recipe(tmp_path, corpus, f"hf:{hf_dir}")
    for argv in (["check", recipe], ["run", recipe, "--out", tmp_path / "r", "--no-progress"]):
        done = cli(*argv, check=False)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
        assert message in done.stderr, done.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_pickled_state_dict_is_read_with_weights_only(tmp_path, corpus):
    """pytorch_model.bin alone: read through torch.load(weights_only=True), the same logits as
    transformers' own model; a pickle of anything but tensors is refused without suggesting to unpickle it."""
    hf_dir = save_gpt2(tmp_path / "gpt2", "gelu")
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    torch.save({k: v for k, v in reference.state_dict().items() if k != "lm_head.weight"}, hf_dir / "pytorch_model.bin")
    (hf_dir / "model.safetensors").unlink()
    run, _ = imported(tmp_path, corpus, hf_dir)
    ids = torch.randint(reference.config.vocab_size, (1, CONTEXT), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (logits(run, ids) - reference(ids).logits).abs().max() < 1e-5

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"transformer.wte.weight": Payload()}, hf_dir / "pytorch_model.bin")
    done = cli("check", bpe_recipe(tmp_path, corpus, f"hf:{hf_dir}"), check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "pytorch_model.bin" in done.stderr, done.stderr
    assert "weights_only=False" not in done.stderr and "unpickled!" not in done.stdout + done.stderr


# -- generation past the context -----------------------------------------------------------------
@pytest.fixture(scope="module")
def context_64(tmp_path_factory, corpus):
    """A char run of a 64-token context and its GPT-2 export."""
    tmp = tmp_path_factory.mktemp("context_64")
    cli("run", tiny_char_recipe(tmp, corpus, steps=20), "--out", tmp / "run", "--no-progress", "--set", "model.context=64")
    done = cli("export", tmp / "run", "--format", "hf", "--out", tmp / "hf")
    return tmp / "run", tmp / "hf", done


def test_the_text_generation_pipeline_stops_at_the_context(context_64):
    """transformers' pipeline asks for 256 new tokens by default; a 64-position GPT-2 crashed
    with IndexError. generation_config.json stops it where the context is full."""
    _, hf, done = context_64
    assert "at most 64 tokens" in done.stdout and "generation_config.json" in done.stdout
    assert transformers.GenerationConfig.from_pretrained(str(hf)).max_length == 64
    generator = transformers.pipeline("text-generation", model=str(hf), device="cpu")
    prompt = "KING: "
    result = generator(prompt, return_tensors=True)[0]["generated_token_ids"]
    assert len(result) == 64 and result[: len(prompt)] == generator.tokenizer(prompt)["input_ids"]


def test_the_documented_loop_generates_past_the_context_as_seqmodel_sample_does(context_64):
    """docs/export.md's sliding-window loop over the transformers model gives 200 new tokens,
    exactly `seqmodel sample --greedy`'s."""
    from doc_snippets import snippet

    run_dir, hf, _ = context_64
    scope = {}
    exec(snippet("export.md", "generate_long"), scope)  # noqa: S102 -- the documentation's own code
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    prompt = "KING: Good night"
    ours = seqmodel.load(run_dir, device="cpu").generate(prompt, greedy=True, max_new_tokens=200)
    theirs = tok.decode(tok(prompt)["input_ids"] + scope["generate_long"](model, tok(prompt)["input_ids"], 200))
    assert theirs == ours and len(ours) == len(prompt) + 200
