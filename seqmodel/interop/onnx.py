"""Any run's model as an ONNX graph (`torch.onnx.export`, the dynamo exporter), checked with
onnxruntime.

The graph takes the tensors of a collated `TokenSet` -- the same ones the model reads in training
-- as named inputs with dynamic batch and length dimensions: per modality ``M.ids`` (discrete) or
``M.values`` (continuous), ``M.positions``, ``M.slot``, ``M.valid``; for the whole set ``valid``,
``modality``, ``segment``, ``doc``, ``time``; an encoder-decoder's encoder set the same names
under ``context.``. It returns the final hidden states ``hidden`` and each output head's
``M.logits`` (or values), plus what the task declares under its "export" capability (a
classifier's ``logits``). ``signature.json`` beside ``model.onnx`` lists every input and output
with its dtype and shape; docs/export.md says how to build them without seqmodel.

The example inputs are two validation batches of the run's own data (so its source must be
available): the graph is traced on one and both are checked against PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from seqmodel.errors import UserError
from seqmodel.segments import ModalityInputs, TokenSet
from seqmodel.task import Slice, can

SET_FIELDS = ("valid", "modality", "segment", "doc", "time")


def _onnx():
    try:
        import onnxruntime
        import onnxscript  # noqa: F401 -- torch.onnx's dynamo exporter needs it
    except ImportError as err:
        raise UserError(f"export --format onnx needs the `{err.name}` package: pip install 'seqmodel[export]'") from None
    return onnxruntime


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """torch.onnx's log lines off for the block (its first export names every torchvision
    operator it skips, which a seqmodel model never uses)."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def flatten(ts: TokenSet, prefix: str = "") -> dict[str, Tensor]:
    """The model-facing tensors of a token set, by input name (encoder set under ``context.``)."""
    out = {}
    for m, inp in ts.inputs.items():
        data = ("ids", inp.ids) if inp.ids is not None else ("values", inp.values)
        out |= {f"{prefix}{m}.{data[0]}": data[1], f"{prefix}{m}.positions": inp.positions,
                f"{prefix}{m}.slot": inp.slot, f"{prefix}{m}.valid": inp.valid}
    out |= {f"{prefix}{k}": getattr(ts, k) for k in SET_FIELDS}
    if ts.context is not None:
        out |= flatten(ts.context, "context.")
    return out


class Graph(nn.Module):
    """The module torch.onnx traces: named tensors in, the model's outputs out."""

    def __init__(self, module: nn.Module, task, example: TokenSet) -> None:
        super().__init__()
        self.module, self.task = module, task
        self.layout = self._layout(example)
        self.names = list(flatten(example))
        self.outputs = [m for m in module.core.heads if m in example.inputs]

    @staticmethod
    def _layout(ts: TokenSet | None):
        if ts is None:
            return None
        return ts.modalities, {m: "ids" if i.ids is not None else "values" for m, i in ts.inputs.items()}, Graph._layout(ts.context)

    def rebuild(self, named: dict[str, Tensor], layout, prefix: str = "") -> TokenSet | None:
        if layout is None:
            return None
        modalities, kinds, context = layout
        inputs = {m: ModalityInputs(slot=named[f"{prefix}{m}.slot"], valid=named[f"{prefix}{m}.valid"],
                                    positions=named[f"{prefix}{m}.positions"], **{kind: named[f"{prefix}{m}.{kind}"]})
                  for m, kind in kinds.items()}  # dense=False: the general path, right for any padding
        return TokenSet(inputs, modalities, *(named[prefix + k] for k in SET_FIELDS),
                        context=self.rebuild(named, context, "context."))

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        ts = self.rebuild(dict(zip(self.names, tensors)), self.layout)
        core = self.module.core
        hidden = core(ts, context=ts.context)
        outs = [hidden] + [core.output(m, hidden, ts) for m in self.outputs]
        if can(self.task, "export"):
            outs += list(self.task.export_outputs(core, self.module.head, ts).values())
        return tuple(outs)

    def output_names(self, example: TokenSet) -> list[str]:
        extra = list(self.task.export_outputs(self.module.core, self.module.head, example)) if can(self.task, "export") else []
        return ["hidden"] + [f"{m}.{'logits' if self.module.core.specs[m].discrete else 'values'}" for m in self.outputs] + extra


def example_batches(pipe) -> list[TokenSet]:
    """Two validation batches (2 and 3 examples): the trace input and a second check of other sizes."""
    stream = pipe.task.batches("val", False)
    return [stream.batch(Slice(k, 0, 0, n, n)) for k, n in ((0, 2), (1, 3))]


def dim_name(name: str, axis: int) -> str:
    """A readable name of a dynamic axis: batch, tokens (the set), M_tokens (modality M's), context_tokens ..."""
    if axis == 0:
        return "batch"
    prefix, _, last = name.rpartition(".")
    if last in SET_FIELDS or not prefix:
        return f"{prefix}_tokens" if prefix else "tokens"
    return f"{prefix.replace('.', '_')}_tokens"


def signature(session) -> dict:
    """Every input and output of the written graph: dtype and shape, dynamic axes by name."""
    def rows(args):
        return [{"name": a.name, "dtype": a.type.removeprefix("tensor(").removesuffix(")"),
                 "shape": [d if isinstance(d, int) else dim_name(a.name, i) for i, d in enumerate(a.shape)]} for a in args]

    return {"inputs": rows(session.get_inputs()), "outputs": rows(session.get_outputs())}


def example_layout(ts: TokenSet, tokenizers: dict) -> list[dict]:
    """The segments of the first example of `ts`, in token order: each one's modality, segment
    and doc numbers, and where its tokens come from: an input ("from": "input", built as the
    modality's preprocessing says), or constant data the task adds to every example (a class
    token: its ids or values and positions), or else the task ("from": "task")."""
    layout = []
    for segment in ts.segment[0, ts.valid[0]].unique_consecutive().tolist():
        in_segment = ts.valid[0] & (ts.segment[0] == segment)
        name = ts.modalities[int(ts.modality[0, in_segment][0])]
        row = {"modality": name, "segment": segment, "doc": int(ts.doc[0, in_segment][0])}
        if name in tokenizers:
            layout.append(row | {"from": "input"})
            continue
        constant = _constant_segment(ts, name, segment)
        layout.append(row | ({"constant": constant} if constant is not None else {"from": "task"}))
    return layout


def _constant_segment(ts: TokenSet, name: str, segment: int) -> dict | None:
    """The data and positions of segment `segment` (modality `name`) when every example of `ts`
    has the same; else None."""
    inp = ts.inputs[name]
    kind, data = ("ids", inp.ids) if inp.ids is not None else ("values", inp.values)
    seen = []
    for b in range(ts.valid.shape[0]):
        mine = inp.valid[b] & (ts.segment[b].gather(0, inp.slot[b]) == segment)
        seen.append((data[b, mine], inp.positions[b, mine]))
    first = seen[0]
    if any(d.shape != first[0].shape or not torch.equal(d, first[0]) or not torch.equal(p, first[1]) for d, p in seen):
        return None
    return {kind: first[0].tolist(), "positions": first[1].tolist()}


def describe(pipe, example: TokenSet, session) -> dict:
    """signature.json: every input and output, and how to build the inputs from files (the
    tokenizers' `preprocessing`, the example's layout) and read the outputs (the task's `export_info`)."""
    sig = signature(session)
    info = pipe.task.export_info() if can(pipe.task, "export_info") else {}
    sig["outputs"] = [row | info.get(row["name"], {}) for row in sig["outputs"]]
    sig["modalities"] = list(example.modalities)
    sig["example"] = example_layout(example, pipe.tokenizers)
    if example.context is not None:
        sig["context.modalities"] = list(example.context.modalities)
        sig["context.example"] = example_layout(example.context, pipe.tokenizers)
    sig["preprocessing"] = {m: tok.preprocessing() for m, tok in pipe.tokenizers.items() if can(tok, "preprocessing")}
    return sig


def export_onnx(pipe, out: Path) -> dict:
    """Write `pipe` (weights loaded, LoRA merged) as ``out/model.onnx`` and ``out/signature.json``
    into the existing empty folder `out`; returns the check: the largest difference between
    onnxruntime's outputs and PyTorch's on two validation batches."""
    ort = _onnx()
    module = pipe.module.eval()
    batches = example_batches(pipe)
    graph = Graph(module, pipe.task, batches[0]).eval()
    tensors = list(flatten(batches[0]).values())
    auto = torch.export.Dim.AUTO
    dynamic = tuple({0: auto, 1: auto} for _ in tensors)
    names = graph.output_names(batches[0])
    with torch.no_grad(), warnings.catch_warnings(), quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, tuple(tensors), dynamo=True, dynamic_shapes={"tensors": dynamic}, input_names=graph.names,
                                    output_names=names, verbose=False)
    program.save(str(out / "model.onnx"))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in batches:
        feed = flatten(batch)
        with torch.no_grad():
            expected = graph(*feed.values())
        got = session.run(names, {k: v.numpy() for k, v in feed.items()})
        worst = max(worst, *(float((torch.from_numpy(g) - e.float()).abs().max()) for g, e in zip(got, expected)))
    (out / "signature.json").write_text(json.dumps(describe(pipe, batches[0], session), indent=1))
    return {"checked_with": "onnxruntime", "max_abs_difference": worst, "probe": "two validation batches (all outputs)"}
