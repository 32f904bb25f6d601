"""The tokenizer conformance kit: real plugins pass it, deliberately broken ones fail it with
the reason, and nothing a plugin does makes the kit itself crash."""

import importlib
import json
from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest
import torch
from seqmodel_tokenizers.char import CharTokenizer

import seqmodel.registry as registry
from seqmodel.conformance import check_tokenizer, run_checks, values_equal
from seqmodel.segments import Segment

BUILT_IN = {"char": "seqmodel_tokenizers.char", "bpe": "seqmodel_tokenizers.bpe", "patches": "seqmodel_tokenizers.patches",
            "mel": "seqmodel_tokenizers.mel", "sar": "seqmodel_tokenizers.sar", "kmer": "seqmodel_kmer.tokenizer"}


def run(name_or_cls) -> tuple[bool, list[str]]:
    lines: list[str] = []
    if isinstance(name_or_cls, str):
        ok = check_tokenizer(name_or_cls, out=lines.append)
    else:
        ok = run_checks(name_or_cls, modality="text", out=lines.append)
    return ok, lines


def line(lines: list[str], check: str) -> str:
    return next(x for x in lines if x.split(":")[0].split(" (")[0].endswith(f" {check}"))


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_installed_tokenizers_pass(name):
    try:
        importlib.import_module(BUILT_IN[name])
    except ImportError as err:
        pytest.skip(f"tokenizer plugin {name!r} is not importable yet ({err})")
    ok, lines = run(name)
    assert ok, "\n".join(lines)
    assert all(x.startswith("PASS") for x in lines[:-1]) and lines[-1] == "9/9 checks passed"


# -- deliberately broken tokenizers ---------------------------------------------------------------
class DropsLastChar(CharTokenizer):
    def decode(self, segment):
        return super().decode(segment)[:-1]


class WrongDtype(CharTokenizer):
    def encode(self, value, *, train=False):
        return Segment(self.modality, ids=torch.from_numpy(self.encode_ids(value)).to(torch.int32))


class IdsOutOfRange(CharTokenizer):
    def encode(self, value, *, train=False):
        return Segment(self.modality, ids=torch.from_numpy(self.encode_ids(value)) + 1)


class PositionsTooFar(CharTokenizer):
    def encode(self, value, *, train=False):
        seg = super().encode(value)
        return Segment(self.modality, ids=seg.ids, positions=seg.positions * 1000)

    def spec(self):
        spec = super().spec()
        return type(spec)(spec.name, vocab_size=spec.vocab_size, max_positions=(64,))


class ForgetsOnLoad(CharTokenizer):
    def load(self, directory):
        super().load(directory)
        self._set_vocab(list(reversed(self.chars)))


class RandomFit(CharTokenizer):
    counter = 0

    def fit(self, values):
        super().fit(values)
        RandomFit.counter += 1
        if RandomFit.counter % 2 == 0:
            self._set_vocab(list(reversed(self.chars)))


class WrongModality(CharTokenizer):
    def encode(self, value, *, train=False):
        return Segment("something-else", ids=super().encode(value).ids)


class NoExamples(CharTokenizer):
    capabilities = ("pieces",)  # does not declare "examples"


class RaisesEverywhere(CharTokenizer):
    def decode(self, segment):
        raise ZeroDivisionError("decode exploded")

    def save(self, directory):
        raise OSError("disk on fire")


class NanValues:
    """A continuous tokenizer whose values are not finite."""

    capabilities = ("examples",)

    @dataclass
    class Config:
        width: int = 3

    def __init__(self, config, modality="x"):
        self.config, self.modality = config, modality

    def spec(self):
        from seqmodel.plugin import ModalitySpec

        return ModalitySpec(self.modality, width=self.config.width)

    def fit(self, values):
        list(values)

    def encode(self, value, *, train=False):
        return Segment(self.modality, values=torch.full((2, self.config.width), float("nan")))

    def decode(self, segment):
        return segment.values

    def save(self, directory):
        pass

    def load(self, directory):
        pass

    def examples(self):
        return [1.0]


@pytest.mark.parametrize("cls, check, reason", [
    (DropsLastChar, "round trip", "decode(encode(x)) != x"),
    (WrongDtype, "contract", "ids int64 (T,), got int32"),
    (IdsOutOfRange, "contract", "outside [0, vocab_size="),
    (PositionsTooFar, "contract", "max_positions[0] = 64"),
    (ForgetsOnLoad, "save/load", "different encoding after save/load"),
    (RandomFit, "determinism", "fitting again under seed 0"),
    (WrongModality, "contract", "segment modality 'something-else'"),
    (NoExamples, "examples", "add `examples()`"),
    (RaisesEverywhere, "round trip", "ZeroDivisionError: decode exploded"),
    (NanValues, "contract", "NaN"),
])
def test_broken_tokenizer_fails_with_reason(cls, check, reason):
    RandomFit.counter = 0
    ok, lines = run(cls)
    assert not ok
    assert line(lines, check).startswith(f"FAIL {check}: ") and reason in line(lines, check), "\n".join(lines)


def test_failures_do_not_stop_later_checks():
    ok, lines = run(RaisesEverywhere)
    assert not ok
    assert line(lines, "save/load").startswith("FAIL save/load: OSError: disk on fire")
    assert line(lines, "forward/backward").startswith("PASS")
    assert lines[-1] == "6/9 checks passed"


def test_setup_failure_skips_the_rest():
    ok, lines = run(NoExamples)
    assert not ok and line(lines, "fit") == "SKIP fit: needs a passing examples check"
    assert lines[-1] == "1/9 checks passed"


def test_broken_tokenizer_through_the_registry(monkeypatch, tmp_path):
    """`check_tokenizer(name)` on an entry point that fails to import reports, not raises."""
    (tmp_path / "kit_broken_mod.py").write_text("raise RuntimeError('plugin import failed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint("broken", "kit_broken_mod:Tok", "seqmodel.tokenizers")
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == "seqmodel.tokenizers" else [])
    ok, lines = run("broken")
    assert not ok and len(lines) == 1
    assert lines[0].startswith("FAIL load: ") and "kit_broken_mod:Tok" in lines[0] and "plugin import failed" in lines[0]


def test_lossy_decode_passes_at_token_level():
    class Rounding(NanValues):
        def encode(self, value, *, train=False):
            return Segment(self.modality, values=torch.tensor(value, dtype=torch.float32).reshape(-1, self.config.width))

        def decode(self, segment):
            return (segment.values * 100).round().numpy() / 100  # 2 decimals: lossy, stable as tokens

        def examples(self):
            return [[0.123456, 1.0, 2.0], [3.14159, 2.71828, 1.41421, 0, 0, 0]]

    ok, lines = run(Rounding)
    assert ok, "\n".join(lines)
    assert line(lines, "round trip") == "PASS round trip (0 exact, 2 equal as tokens)"


def test_values_equal_is_an_honest_comparison():
    assert values_equal({"a": [1, "x"]}, {"a": (1, "x")}, 0.0)
    assert not values_equal({"a": 1}, {"a": 1, "b": 2}, 0.0)
    assert values_equal(torch.ones(3), torch.ones(3).numpy() + 1e-7, 1e-5)
    assert not values_equal(torch.ones(3), torch.ones(4), 1e-5)
    assert not values_equal(torch.arange(3), torch.arange(3) + 1, 1.0)  # integers compare exactly
    assert not values_equal("abc", "ab", 0.0)
    assert json.dumps(values_equal(object(), object(), 0.0)) == "false"


def test_a_tokenizer_declaring_hf_tokenizer_must_load_its_tokenizer_json():
    """Capability "hf_tokenizer" is both ways: `init_from = "hf:DIR"` hands the tokenizer a folder
    holding only a tokenizer.json, so one whose load() cannot read it fails save/load."""

    class OneWay(CharTokenizer):
        def load(self, directory):
            self._set_vocab(json.loads((directory / self.FILE).read_text())["chars"])

    ok, lines = run(OneWay)
    assert not ok and line(lines, "save/load").startswith("FAIL save/load: capability hf_tokenizer: load() of a folder")
    assert run(CharTokenizer)[0]
