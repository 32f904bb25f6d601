"""torch.compile of the training step: a decoder's forward + backward is one graph (a graph break
would be a host sync every step on a GPU) and computes what eager mode does."""

import json

import pytest
import torch
from conftest import tiny_char_recipe

from seqmodel.data.pipeline import Pipeline
from seqmodel.recipe.schema import load_recipe
from seqmodel.task import Slice

OPTIONS = ["model.norm=rmsnorm", "model.mlp=swiglu", "model.qk_norm=true", "model.kv_heads=1", "model.embed_norm=true"]


@pytest.mark.parametrize("layer_masks, options", [([], []), (["causal", "sliding_window:8"], []), (["causal", "sliding_window:8"], OPTIONS)],
                         ids=["causal", "schedule", "schedule+options"])
def test_decoder_training_step_compiles_as_one_graph(tmp_path, corpus, layer_masks, options):
    torch.manual_seed(0)
    pipe = Pipeline(load_recipe(tiny_char_recipe(tmp_path, corpus), [f"model.layer_masks={json.dumps(layer_masks)}", *options]))
    pipe.fit()
    module = pipe.module
    batch = pipe.task.batches("train", True).batch(Slice(0, 0, 0, 8, 8))

    want, _ = module(batch)
    want.backward()
    want_grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)

    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    got, _ = compiled(batch)
    got.backward()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert want_grads
    params = dict(module.named_parameters())
    for name, grad in want_grads.items():
        torch.testing.assert_close(params[name].grad, grad, atol=1e-6, rtol=1e-5, msg=name)
