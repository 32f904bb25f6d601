"""benchmarks/mfu.py: its PaLM FLOP count against torch's own FLOP counter, and one tiny step."""

import sys

import torch
import torch.nn.functional as F
from conftest import REPO
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from seqmodel.segments import dense_set

sys.path.insert(0, str(REPO / "benchmarks"))
import mfu  # noqa: E402

TINY = dict(layers=2, heads=2, d_model=32, context=16, batch=3, vocab=50, dropout=0.0)


def test_palm_flops_per_token_equal_torch_flop_counter():
    model, cfg = mfu.build(TINY, torch.device("cpu"))
    chunk = torch.randint(TINY["vocab"], (TINY["batch"], TINY["context"] + 1))
    ts = dense_set("text", ids=chunk[:, :-1], targets=chunk[:, 1:])
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # math attention: counted bmm
        logits = model.output("text", model(ts), ts)
        F.cross_entropy(logits.flatten(0, 1), ts.inputs["text"].targets.flatten()).backward()
    tokens = TINY["batch"] * TINY["context"]
    norms = sum(p.numel() for n, p in model.named_parameters() if ".ln" in n or n.startswith("ln"))
    # PaLM's 6N counts every parameter as a matrix entry; LayerNorm weights do no matmul
    assert counter.get_total_flops() + 6 * norms * tokens == mfu.flops_per_token(model, cfg) * tokens


def test_one_tiny_measurement():
    row = mfu.measure(TINY, torch.device("cpu"), "fp32", compile=False, steps=2, warmup=1)
    assert row["median_ms"] > 0
    assert abs(row["tokens_per_s"] - TINY["batch"] * TINY["context"] * 1000 / row["median_ms"]) < 1e-6 * row["tokens_per_s"]
    assert row["tflops"] == row["flops_per_token"] * row["tokens_per_s"] / 1e12
