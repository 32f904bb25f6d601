"""bf16 autocast on CPU: it trains, and it warns where the CPU has no bf16 instructions."""

import json
from pathlib import Path

import pytest
import torch
from conftest import cli, tiny_char_recipe

from seqmodel.training.train import emulated_bf16_warning


def cpuinfo_has_bf16() -> bool:
    """From the kernel's CPU flags (x86: avx512_bf16, amx_bf16; ARM: bf16), not from torch."""
    flags = {word for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.lower().startswith(("flags", "features")) for word in line.split(":", 1)[1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


@pytest.mark.parametrize("caps, warns", [({}, True), ({"avx2": True, "avx512_f": True}, True),
                                         ({"avx512_bf16": True}, False), ({"amx_bf16": True}, False),
                                         ({"bf16": True}, False)])
def test_emulated_bf16_warning_follows_the_cpu_capabilities(monkeypatch, caps, warns):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert (emulated_bf16_warning("bf16", cpu=True) is not None) == warns
    assert emulated_bf16_warning("fp32", cpu=True) is None
    assert emulated_bf16_warning("bf16", cpu=False) is None


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU flags from /proc/cpuinfo")
def test_bf16_training_on_cpu_runs_and_warns_only_without_bf16_instructions(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=4, eval_every=4, log_every=2, precision="bf16")
    done = cli("run", recipe, "--out", tmp_path / "run", "--no-progress")
    losses = [json.loads(x)["train_loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses)
    assert ("without bf16 instructions" in done.stderr) == (not cpuinfo_has_bf16())


@pytest.mark.parametrize("caps, expected", [({}, "fp32"), ({"avx2": True, "avx512_f": True}, "fp32"),
                                            ({"avx512_bf16": True}, "bf16"), ({"bf16": True}, "bf16")])
def test_auto_precision_is_bf16_only_on_cpus_that_compute_in_it(monkeypatch, caps, expected):
    from seqmodel.training.train import resolved_precision

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert resolved_precision("auto", cpu=True) == expected
    assert resolved_precision("fp32", cpu=True) == "fp32" and resolved_precision("bf16", cpu=True) == "bf16"


def test_auto_precision_says_what_it_chose_and_never_warns_of_emulation(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus, steps=2, eval_every=2, log_every=1, precision="auto")
    done = cli("run", recipe, "--out", tmp_path / "run", "--no-progress")
    chosen = "bf16" if cpuinfo_has_bf16() else "fp32"
    assert f"precision auto: {chosen} on this CPU" in done.stderr
    assert "without bf16 instructions" not in done.stderr
