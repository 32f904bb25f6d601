"""LoRA through peft (`[train] lora`): only the adapters train, they are saved in peft's format,
and the merged export computes what the adapted model computes."""

import json

import pytest
import torch
from conftest import cli, tiny_char_recipe
from safetensors.torch import load_file

pytest.importorskip("peft")
import seqmodel  # noqa: E402
from seqmodel.segments import dense_set  # noqa: E402
from seqmodel.training import checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("lora")
    recipe = tiny_char_recipe(tmp, corpus, steps=10)
    cli("run", recipe, "--out", tmp / "base", "--no-progress")
    cli("run", recipe, "--out", tmp / "lora", "--no-progress", "--set", f'train.init_from="{tmp / "base"}"',
        "--set", 'train.lora={rank=4, alpha=8, targets=["qkv", "fc"]}', "--set", "train.lr=0.05")
    return tmp / "base", tmp / "lora"


def weights(run):
    return load_file(str(checkpoint.latest(run) / "model.safetensors"))


def test_only_the_adapter_parameters_change(runs):
    base, lora = weights(runs[0]), weights(runs[1])
    adapters = [k for k in lora if ".lora_" in k]
    assert len(adapters) == 2 * 2 * 2  # lora_A and lora_B on qkv and fc of 2 blocks
    assert any(lora[k].abs().sum() > 0 for k in adapters if ".lora_B." in k)  # B starts at zero: it trained
    for key, value in lora.items():
        if ".lora_" in key:
            continue
        assert torch.equal(value, base[key.replace(".base_layer.", ".")]), key


def test_the_optimizer_sees_only_the_adapters(runs):
    state = torch.load(checkpoint.latest(runs[1]) / "optimizer.pt", weights_only=True)
    run = seqmodel.load(runs[1], device="cpu")
    trainable = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(state["state"]) == len(trainable)


def test_the_adapters_are_saved_in_peft_format(runs):
    adapter = runs[1] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and sorted(config["target_modules"]) == ["fc", "qkv"]
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    ckpt = weights(runs[1])
    assert len(saved) == 8
    for key, value in saved.items():  # peft drops the adapter name ("default") from its keys
        name = "core." + key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        assert torch.equal(value, ckpt[name]), key


def test_the_merged_hf_export_equals_the_adapted_model(runs, tmp_path):
    transformers = pytest.importorskip("transformers")
    cli("export", runs[1], "--format", "hf", "--out", tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    run = seqmodel.load(runs[1], device="cpu")
    ids = torch.randint(run.model.core.specs["text"].vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    batch = dense_set("text", ids=ids)
    with torch.no_grad():
        adapted = run.model.core.output("text", run.model.core(batch), batch)
        base = seqmodel.load(runs[0], device="cpu").model.core
        assert (base.output("text", base(batch), batch) - adapted).abs().max() > 1e-3  # the adapters matter
        assert (model(ids).logits - adapted).abs().max() < 1e-5


def test_a_target_that_matches_no_linear_layer_is_a_one_line_error(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1)
    done = cli("run", recipe, "--out", tmp_path / "r", "--no-progress", "--set", 'train.lora={rank=4, targets=["ln_attn"]}',
               check=False)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("seqmodel:")]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "tiny_char.toml: [train] lora targets" in lines[0] and "'ln_attn'" in lines[0]
    done = cli("run", recipe, "--out", tmp_path / "r", "--no-progress", "--set", "train.lora={rank=-1}", check=False)
    assert done.returncode == 2 and "lora rank" in done.stderr


def test_a_warm_start_from_a_lora_run_begins_at_the_adapted_model(runs, tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=1, lr=0.0, min_lr=0.0, warmup=0)
    cli("run", recipe, "--out", tmp_path / "next", "--no-progress", "--set", f'train.init_from="{runs[1]}"')
    adapted, plain = (seqmodel.load(r, device="cpu").model.core for r in (runs[1], tmp_path / "next"))
    assert not any(".lora_" in n for n, _ in plain.named_parameters())
    ids = torch.randint(adapted.specs["text"].vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
    batch = dense_set("text", ids=ids)
    with torch.no_grad():
        assert (adapted.output("text", adapted(batch), batch) - plain.output("text", plain(batch), batch)).abs().max() < 1e-5
