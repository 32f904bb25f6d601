"""The tokenizer conformance kit: ``seqmodel plugins check NAME``.

Loads an installed tokenizer plugin through the registry, builds it from its default `Config`,
fits it on the samples its ``examples()`` method returns (capability "examples"), and checks what the rest of seqmodel
relies on:

- round trip: ``decode(encode(x)) == x`` (floats within 1e-5), or else -- for a tokenizer whose
  decode is lossy or returns another representation -- ``encode(decode(encode(x)))`` gives the
  same tokens (ids exactly, values within 0.05). A tokenizer that declares "compare" defines
  ``same(value, decoded) -> bool`` to compare a value with its decoding itself (e.g. audio with
  its mel features).
- contract: `Segment` shapes and dtypes against `spec()` (ids int64 (T,) below vocab_size, or
  values float32 (T, width), finite), positions int64 (T,) or (T, P) within ``max_positions``,
  modality names.
- save/load: a fresh instance loaded from the saved state has the same spec and encodings (and,
  for "hf_tokenizer", from a folder holding only its ``hf_tokenizer()``'s tokenizer.json; a
  "preprocessing" description must be JSON-able).
- determinism: encoding twice, and fitting twice under the same seed, give identical results.
- forward/backward: a 1-layer `Transformer` with an output head for the modality runs on
  ``collate`` of the encodings; the loss and every gradient are finite.

Each check prints ``PASS name`` or ``FAIL name: reason``; an exception inside a check is that
check's failure, never a crash. `run_checks` runs the kit on a class directly (for a plugin's
own tests).
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seqmodel import registry
from seqmodel.config import build
from seqmodel.errors import UserError
from seqmodel.model.config import ModelConfig
from seqmodel.model.transformer import Transformer
from seqmodel.plugin import ModalitySpec, declared, segment_problem, tensor_kind
from seqmodel.segments import Segment, collate

VALUE_ATOL = 1e-5
DEFAULT_CONTEXT = 256  # ModelConfig.context's default
ROUND_TRIP_ATOL = 0.05
SEED = 0


class CheckFailed(Exception):
    """A check's reason for failing."""


def check_tokenizer(name: str, out: Callable[[str], Any] = print) -> bool:
    """Run the conformance kit on the installed tokenizer plugin `name`.

    Args:
        name: the plugin's entry-point name in ``seqmodel.tokenizers``.
        out: where the ``PASS``/``FAIL`` lines go.

    Returns:
        True when every check passed.
    """
    try:
        cls = registry.load("tokenizer", name)
    except Exception as err:  # a broken plugin is a failed check, not a crash
        out(f"FAIL load: {err}")
        return False
    dist, version = registry.plugin_version("tokenizer", name)
    out(f"PASS load ({name!r} from {dist} {version})")
    return run_checks(cls, modality=name, out=out)


def run_checks(cls: type, modality: str = "check", out: Callable[[str], Any] = print) -> bool:
    """Run every check on tokenizer class `cls`, built as ``cls(cls.Config(), modality)``."""
    kit = _Kit(cls, modality)
    steps = [("construct", kit.construct), ("examples", kit.examples), ("fit", kit.fit), ("encode", kit.encode),
             ("round trip", kit.round_trip), ("contract", kit.contract), ("save/load", kit.save_load),
             ("determinism", kit.determinism), ("forward/backward", kit.forward_backward)]
    setup, passed, blocked = 4, 0, None
    for i, (label, step) in enumerate(steps):
        if blocked:
            out(f"SKIP {label}: needs {blocked}")
            continue
        try:
            note = step()
        except CheckFailed as err:
            out(f"FAIL {label}: {err}")
        except Exception as err:
            out(f"FAIL {label}: {type(err).__name__}: {' '.join(str(err).split())}")
        else:
            passed += 1
            out(f"PASS {label}" + (f" ({note})" if note else ""))
            continue
        if i < setup:
            blocked = f"a passing {label} check"
    out(f"{passed}/{len(steps)} checks passed")
    return passed == len(steps)


@contextmanager
def _seeded(seed: int = SEED):
    """Seed python, numpy and torch; restore their states afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


class _Kit:
    """State shared by the checks: the fitted tokenizer, its samples and their encodings."""

    def __init__(self, cls: type, modality: str) -> None:
        self.cls, self.modality = cls, modality
        self.tok: Any = None
        self.samples: list = []
        self.segments: list[Segment] = []

    def new(self):
        try:
            config = build(self.cls.Config, {}, "the default Config:")
        except UserError as err:
            raise CheckFailed(str(err)) from None
        return self.cls(config, self.modality)

    def fitted(self):
        tok = self.new()
        with _seeded():
            tok.fit(iter(self.samples))
        return tok

    # -- setup ---------------------------------------------------------------------------------
    def construct(self) -> None:
        self.tok = self.new()

    def examples(self) -> str:
        if "examples" not in declared(self.tok):
            raise CheckFailed("the tokenizer declares no \"examples\" capability; add `examples()` returning a few "
                              "sample field values and list \"examples\" in its `capabilities` (see "
                              "seqmodel_tokenizers/char.py) so the kit can fit and encode")
        self.samples = list(self.tok.examples())
        if not self.samples:
            raise CheckFailed("examples() returned no samples; return a few field values")
        return f"{len(self.samples)} samples"

    def fit(self) -> None:
        with _seeded():
            self.tok.fit(iter(self.samples))  # a one-pass iterator, as the pipeline passes
        if not isinstance(self.tok.spec(), ModalitySpec):
            raise CheckFailed(f"spec() returned {type(self.tok.spec()).__name__}, not a ModalitySpec")

    def encode(self) -> None:
        self.segments = []
        for i, x in enumerate(self.samples):
            try:
                seg = self.tok.encode(x)
            except Exception as err:
                raise CheckFailed(f"sample {i}: encode raised {type(err).__name__}: {err}") from err
            if not isinstance(seg, Segment):
                raise CheckFailed(f"sample {i}: encode returned {type(seg).__name__}, not a Segment")
            self.segments.append(seg)

    # -- checks --------------------------------------------------------------------------------
    def round_trip(self) -> str:
        exact = 0
        compare = "compare" in declared(self.tok)
        for i, (x, seg) in enumerate(zip(self.samples, self.segments)):
            y = self.tok.decode(seg)
            if self.tok.same(x, y) if compare else values_equal(x, y, VALUE_ATOL):
                exact += 1
                continue
            try:
                again = self.tok.encode(y)
            except Exception as err:
                raise CheckFailed(f"sample {i}: decode(encode(x)) != x ({describe(x, y)}), and encoding the "
                                  f"decoded value raised {type(err).__name__}: {err}") from err
            diff = segment_diff(seg, again, ROUND_TRIP_ATOL)
            if diff:
                raise CheckFailed(f"sample {i}: decode(encode(x)) != x ({describe(x, y)}), and "
                                  f"encode(decode(encode(x))) != encode(x): {diff}")
        lossy = len(self.samples) - exact
        return f"{exact} exact" + (f", {lossy} equal as tokens" if lossy else "")

    def contract(self) -> None:
        spec = self.tok.spec()
        names = {"the tokenizer's .modality": self.tok.modality}
        if "modalities" not in declared(self.tok):  # a multi-modality tokenizer names its own modalities
            names["spec().name"] = spec.name
        for what, got in names.items():
            if got != self.modality:
                raise CheckFailed(f"{what} is {got!r}, but the tokenizer was built for modality {self.modality!r}")
        if spec.position == "2d" and len(spec.max_positions) < 2:
            raise CheckFailed(f"2d positions need spec().max_positions = (rows, cols), got {spec.max_positions}")
        coords = set()
        for i, seg in enumerate(self.segments):
            # 1-D positions without max_positions index the model's context table: a sample's
            # positions must fit the default context (or its own length, when longer)
            problem = segment_problem(seg, spec, context=max(DEFAULT_CONTEXT, len(seg)))
            if problem:
                raise CheckFailed(f"sample {i}: {problem}")
            coords.add(1 if seg.positions.dim() == 1 else seg.positions.shape[1])
        if len(coords) > 1:
            raise CheckFailed(f"positions have {sorted(coords)} coordinates in different samples; use one layout")

    def save_load(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.tok.save(Path(tmp))
            fresh = self.new()
            fresh.load(Path(tmp))
        if fresh.spec() != self.tok.spec():
            raise CheckFailed(f"spec after load {fresh.spec()} != spec before save {self.tok.spec()}")
        self.compare(fresh, "after save/load")
        if "hf_tokenizer" in declared(self.tok):
            with tempfile.TemporaryDirectory() as tmp:
                self.tok.hf_tokenizer().save(str(Path(tmp) / "tokenizer.json"))
                fresh = self.new()
                try:
                    fresh.load(Path(tmp))
                except Exception as err:  # noqa: BLE001 -- any failure of the plugin is the check's finding
                    raise CheckFailed(f"capability hf_tokenizer: load() of a folder holding only its hf_tokenizer()'s "
                                      f"tokenizer.json raised {type(err).__name__}: {' '.join(str(err).split())}") from None
            self.compare(fresh, "after load() of a folder holding only its hf_tokenizer()'s tokenizer.json (capability hf_tokenizer)")
        if "preprocessing" in declared(self.tok):
            try:
                json.dumps(self.tok.preprocessing())
            except (TypeError, ValueError) as err:
                raise CheckFailed(f"preprocessing() is not JSON-able: {err}") from None

    def determinism(self) -> None:
        for i, (x, seg) in enumerate(zip(self.samples, self.segments)):
            diff = segment_diff(seg, self.tok.encode(x))
            if diff:
                raise CheckFailed(f"sample {i}: encoding twice gives different tokens: {diff}")
        again = self.fitted()
        if again.spec() != self.tok.spec():
            raise CheckFailed(f"fitting twice under seed {SEED} gives different specs: {self.tok.spec()} vs {again.spec()}")
        self.compare(again, f"after fitting again under seed {SEED}")

    def compare(self, other, when: str) -> None:
        for i, (x, seg) in enumerate(zip(self.samples, self.segments)):
            diff = segment_diff(seg, other.encode(x))
            if diff:
                raise CheckFailed(f"sample {i}: different encoding {when}: {diff}")
            if not values_equal(self.tok.decode(seg), other.decode(seg), 0.0):
                raise CheckFailed(f"sample {i}: different decoding {when}")

    def forward_backward(self) -> str:
        spec, segs = self.tok.spec(), [s for s in self.segments if len(s)]
        if not segs:
            raise CheckFailed("every sample encodes to zero tokens; return examples() that give tokens")
        ts = collate([[s] for s in segs])
        first = max(int((s.positions[:, 0] if s.positions.dim() == 2 else s.positions).max()) for s in segs)
        cfg = ModelConfig(arch="decoder", layers=1, d_model=32, heads=2, context=max(ts.shape[1], first + 1))
        with _seeded():
            model = Transformer(cfg, [spec], outputs=(spec.name,))
            hidden = model(ts)
            if tuple(hidden.shape) != (*ts.shape, cfg.d_model):
                raise CheckFailed(f"hidden states {tuple(hidden.shape)}, expected {(*ts.shape, cfg.d_model)}")
            loss = head_loss(model, spec.name, spec, ts, hidden)
            loss.backward()
        if not torch.isfinite(loss):
            raise CheckFailed(f"the loss is {loss.item()}")
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise CheckFailed(f"non-finite gradients in {', '.join(bad)}")
        if model.adapters[spec.name].weight.grad is None:
            raise CheckFailed("no gradient reached the modality's input adapter")
        return f"{len(segs)} examples, {ts.shape[1]} tokens, loss {loss.item():.3f}"


def head_loss(model, modality: str, spec: ModalitySpec, ts, hidden: torch.Tensor) -> torch.Tensor:
    """Reconstruct each token from its own output: cross-entropy on ids, or MSE on values."""
    inp = ts.inputs[modality]
    out = model.output(modality, hidden, ts)  # (B, Tm, V) or (B, Tm, F)
    width = spec.vocab_size if spec.discrete else spec.width
    if tuple(out.shape) != (*inp.valid.shape, width):
        raise CheckFailed(f"output head gives {tuple(out.shape)}, expected {(*inp.valid.shape, width)}")
    if spec.discrete:
        return F.cross_entropy(out[inp.valid], inp.ids[inp.valid])
    return F.mse_loss(out[inp.valid], inp.values[inp.valid])


# -- comparing values and segments ------------------------------------------------------------
def _is_array(x) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor)) or type(x).__module__.startswith("PIL.")


def _array(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def values_equal(a, b, atol: float) -> bool:
    """Whether two field values are equal: recursively for dicts and sequences, arrays (tensors,
    images) by shape and value (floats within `atol`), anything else by ``==``."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            values_equal(a[k], b[k], atol) for k in a)
    if _is_array(a) or _is_array(b):
        try:
            x, y = _array(a), _array(b)
        except Exception:
            return False
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            return bool(np.allclose(x, y, rtol=0.0, atol=atol, equal_nan=True))
        return bool(np.array_equal(x, y))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y, atol) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


def describe(a, b) -> str:
    """A short account of how value `b` differs from `a`."""
    if isinstance(a, str) and isinstance(b, str):
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return f"{a[:60]!r} vs {b[:60]!r}, first difference at character {at}"
    if _is_array(a) and _is_array(b):
        x, y = _array(a), _array(b)
        if x.shape != y.shape:
            return f"shape {x.shape} vs {y.shape}"
        return f"max difference {float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()):.3g}"
    return f"{type(a).__name__} vs {type(b).__name__}"


def segment_diff(a: Segment, b: Segment, atol: float = 0.0) -> str | None:
    """How segment `b` differs from `a` (values within `atol`, all else exactly), or None."""
    if a.modality != b.modality:
        return f"modality {a.modality!r} vs {b.modality!r}"
    for key in ("ids", "values", "positions", "targets", "loss_mask", "doc"):
        x, y = getattr(a, key), getattr(b, key)
        if (x is None) != (y is None):
            return f"{key} is set in one and not in the other"
        if x is None:
            continue
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{key}: {tensor_kind(x)} vs {tensor_kind(y)}"
        if not values_equal(x, y, atol if key == "values" else 0.0):
            return f"{key} differ ({describe(x, y)})"
    return None
