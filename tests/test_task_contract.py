"""The task contract: declared capabilities checked at load, the narrow context, the shared mask
check of next-token tasks, the segment check at the plugin boundary, evaluation options."""

import json
import sys
from dataclasses import dataclass

import pytest
import torch
from conftest import cli, one_line_error, tiny_char_recipe
from seqmodel_tokenizers.char import CharConfig, CharTokenizer

import seqmodel.registry as registry
from seqmodel.errors import UserError
from seqmodel.generate import generate
from seqmodel.masks import MaskSchedule, future_leak, layout_view
from seqmodel.model.config import ModelConfig
from seqmodel.model.transformer import Transformer
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment
from seqmodel.task import TaskContext


class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.metadata, self.version = {"Name": name}, version


class FakeEntryPoint:
    def __init__(self, name, value, group, obj=None, load=None) -> None:
        self.name, self.value, self.group, self.dist = name, value, group, FakeDist("acme", "1.2")
        self.obj, self._load = obj, load

    def load(self):
        return self._load() if self._load else self.obj


@pytest.fixture
def extra_plugins(monkeypatch):
    """Add fake entry points beside the real ones: `extra_plugins(group, name, obj_or_loader)`."""
    real = registry.entry_points
    extra: list[FakeEntryPoint] = []
    monkeypatch.setattr(registry, "entry_points", lambda group: [*real(group=group), *(e for e in extra if e.group == group)])

    def add(group, name, obj=None, load=None):
        extra.append(FakeEntryPoint(name, f"acme.{name}:Plugin", group, obj, load))

    return add


# -- capabilities are declared and checked at load ---------------------------------------------
@dataclass
class NoConfig:
    pass


def task_class(capabilities, **members):
    base = {name: (lambda self, *a: None) for name in registry.REQUIRED["task"]}
    return type("FakeTask", (), {"Config": NoConfig, "capabilities": capabilities, **base, **members})


@pytest.mark.parametrize("capabilities, members, problem", [
    (("generate",), {}, "declares the 'generate' capability but has no generate"),
    (("state",), {"save": lambda self, d: None}, "declares the 'state' capability but has no load"),
    (("genrate",), {}, "unknown capability 'genrate' (did you mean generate?)"),
    (("eval_options",), {"EvalOptions": int}, "its `EvalOptions` is not a dataclass"),
    ("generate", {}, None),  # a string is iterable but not a tuple of names: refused below
])
def test_task_capabilities_are_checked_at_load(extra_plugins, capabilities, members, problem):
    extra_plugins("seqmodel.tasks", "faketask", task_class(capabilities, **members))
    if problem is None:
        problem = "`capabilities` must be a tuple of names"
    with pytest.raises(registry.PluginError) as err:
        registry.load("task", "faketask")
    assert problem in str(err.value) and "distribution acme 1.2" in str(err.value) and "\n" not in str(err.value)


def test_a_task_with_every_declared_member_loads(extra_plugins):
    cls = task_class(("generate", "score"), generate=lambda *a: "", score=lambda *a: {})
    extra_plugins("seqmodel.tasks", "faketask", cls)
    assert registry.load("task", "faketask") is cls


@pytest.mark.parametrize("behaviour, expected", [
    ("exit", "SystemExit"),
    ("hang", "took longer than"),
])
def test_a_plugin_that_exits_or_hangs_at_import_is_listed_as_broken(extra_plugins, monkeypatch, behaviour, expected):
    def load():
        if behaviour == "exit":
            sys.exit(3)
        import time
        time.sleep(30)

    extra_plugins("seqmodel.sources", "bad", load=load)
    monkeypatch.setattr("seqmodel.cli.inspect.PLUGIN_IMPORT_SECONDS", 0.5)
    done = cli("plugins", check=False)
    assert done.returncode == 0
    row = next(line for line in done.stdout.splitlines() if " bad " in line)
    assert "BROKEN" in row and expected in row
    assert any(" lm " in line and line.endswith("ok") for line in done.stdout.splitlines())  # the others still listed


def test_what_a_plugin_prints_at_import_keeps_plugins_json_valid(extra_plugins):
    def load():
        print("hello from a chatty plugin")
        return CharTokenizer

    extra_plugins("seqmodel.tokenizers", "chatty", load=load)
    done = cli("plugins", "--json")
    rows = json.loads(done.stdout)
    assert any(r["name"] == "chatty" and r["error"] is None for r in rows)
    assert "hello from a chatty plugin" in done.stderr


# -- next-token tasks refuse masks under which a token sees its own future -----------------------
@pytest.mark.parametrize("mask, ok", [
    ("causal", True), ("sliding_window:4", True), ("causal & segment", True), ("causal & local:3", True),
    ("full", False), ("local:2", False), ("segment", False), ("prefix", False), ("modality:text>text", False),
    ("causal | local:1", False),
])
def test_lm_refuses_masks_that_see_the_future(tmp_path, corpus, mask, ok):
    recipe = tiny_char_recipe(tmp_path, corpus)
    done = cli("check", recipe, "--set", f"model.mask={json.dumps(mask)}", check=False)
    if ok:
        assert done.returncode == 0, done.stderr
    else:
        error = one_line_error(done)
        assert "[model] mask" in error and "lets a token see later ones" in error and str(recipe) in error


def test_lm_refuses_a_future_seeing_layer_of_a_schedule(tmp_path, corpus):
    done = cli("check", tiny_char_recipe(tmp_path, corpus), "--set", 'model.layer_masks=["causal", "local:4"]', check=False)
    error = one_line_error(done)
    assert "[model] layer_masks" in error and "'local:4'" in error


@pytest.mark.parametrize("arch", ["encoder", "encoder_decoder"])
def test_lm_needs_a_decoder(tmp_path, corpus, arch):
    done = cli("check", tiny_char_recipe(tmp_path, corpus), "--set", f'model.arch="{arch}"', check=False)
    assert "the lm task needs a \"decoder\"" in one_line_error(done)


def test_future_leak_agrees_with_a_brute_force_check():
    view = layout_view([("image", 3), ("text", 5)])
    later = view.index[None, :] > view.index[:, None]
    predicted = view.segment == 1
    for text in ("causal", "prefix", "prefix:2", "full", "segment", "local:1", "sliding_window:2", "modality:text>image"):
        (mask,) = MaskSchedule.parse(text).masks
        q = view._replace(**{f: t[:, None] for f, t in zip(view._fields[:5], view[:5])})
        k = view._replace(**{f: t[None, :] for f, t in zip(view._fields[:5], view[:5])})
        brute = any(bool(mask.allowed(q, k)[i, j]) for i in range(8) for j in range(8) if later[i, j] and predicted[i])
        assert (future_leak(MaskSchedule((mask,)), view, predicted) is not None) == brute, text


def test_generate_refuses_a_decoder_that_sees_the_future():
    spec = ModalitySpec("text", vocab_size=7)
    model = Transformer(ModelConfig(layers=1, d_model=16, heads=2, context=16, mask="full"), [spec], outputs=("text",))
    with pytest.raises(UserError, match="lets a generated token see later ones"):
        generate(model.eval(), [Segment("text", ids=torch.tensor([1, 2]))], 3, lambda logits: int(logits.argmax()))


def test_a_seq2seq_decoder_must_be_causal_over_its_target(tmp_path):
    done = cli("check", "recipes/caption_digits.toml", "--set", "data.train_pairs=50", "--set", "data.val_pairs=10",
               "--set", "data.test_pairs=10", "--set", 'model.mask="prefix:2"', check=False)
    error = one_line_error(done)
    assert "the seq2seq task's decoder" in error and "'prefix:2'" in error


# -- mask rules name modalities the model has ---------------------------------------------------
def test_an_unknown_modality_in_a_mask_rule_is_a_one_line_error(tmp_path, corpus):
    done = cli("check", tiny_char_recipe(tmp_path, corpus), "--set", 'model.mask="causal & modality:text>nosuch"',
               check=False)
    error = one_line_error(done)
    assert "[model] mask" in error and "'nosuch'" in error and "it has: text" in error


# -- segments are checked at the plugin boundary ---------------------------------------------------
class OutOfVocab(CharTokenizer):
    def encode(self, value, *, train=False):
        return Segment(self.modality, ids=super().encode(value).ids + 1000)


class FloatIds(CharTokenizer):
    def encode(self, value, *, train=False):
        return Segment(self.modality, values=super().encode(value).ids.float()[:, None])


class TwoDimIds(CharTokenizer):
    def encode(self, value, *, train=False):
        ids = super().encode(value).ids
        return Segment(self.modality, ids=ids[: len(ids) // 2 * 2].view(-1, 2))


@pytest.mark.parametrize("cls, problem", [
    (OutOfVocab, "outside [0, vocab_size="), (FloatIds, "a discrete modality needs ids int64"),
    (TwoDimIds, "ids must be 1-D"),
])
def test_a_tokenizer_that_breaks_its_spec_is_named_at_the_boundary(extra_plugins, tmp_path, corpus, cls, problem):
    extra_plugins("seqmodel.tokenizers", "badtok", cls)
    recipe = tiny_char_recipe(tmp_path, corpus)
    recipe.write_text(recipe.read_text().replace('kind = "char"', 'kind = "badtok"'))
    done = cli("check", recipe, check=False)
    error = one_line_error(done)
    assert "tokenizer plugin 'badtok'" in error and "distribution acme 1.2" in error and problem in error


def test_a_tokenizer_fed_the_wrong_kind_of_field_is_one_line(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus)
    recipe.write_text(recipe.read_text().replace('kind = "char"', 'kind = "patches"'))
    done = cli("check", recipe, check=False)
    assert "patches" in one_line_error(done)


def test_context_encode_passes_the_generator_only_to_augmenting_tokenizers():
    seen = []

    class Augments(CharTokenizer):
        capabilities = ("augment",)

        def encode(self, value, *, train=False, generator=None):
            seen.append((train, generator))
            return super().encode(value)

    plain, aug = CharTokenizer(CharConfig(), "a"), Augments(CharConfig(), "b")
    for tok in (plain, aug):
        tok.fit(["abc"])
    ctx = TaskContext({"a": plain, "b": aug}, {"a": "t", "b": "t"}, ModelConfig(), 0, 1, None, lambda split: [])
    g = torch.Generator()
    assert ctx.encode("a", "cab", train=True, generator=g).ids.tolist() == [2, 0, 1]
    ctx.encode("b", "cab", train=True, generator=g)
    ctx.encode("b", "cab", train=False, generator=g)
    assert seen == [(True, g), (False, None)]  # a plain tokenizer is never handed one; eval-time encoding gets none


# -- evaluation options and undeclared capabilities ------------------------------------------------
@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("lm")
    cli("run", tiny_char_recipe(tmp, corpus, steps=6), "--out", tmp / "run", "--no-progress")
    return tmp / "run"


@pytest.mark.parametrize("args, message", [
    (["--set", "nope=1"], "eval --set nope: unknown key (known keys: batch_size)"),
    (["--set", "batch_size=0"], "eval --set batch_size: must be at least 1"),
    (["--set", "batch_size=x"], "eval --set batch_size: expected an integer"),
    (["--set", "batch_size"], "expected KEY=VALUE"),
    (["--limit", "0"], "--limit: expected at least 1 batch"),
])
def test_eval_options_are_the_tasks_typed_options(lm_run, args, message):
    done = cli("eval", lm_run, *args, check=False)
    assert message in one_line_error(done)


def test_eval_batch_size_does_not_change_the_metrics(lm_run):
    a = json.loads(cli("eval", lm_run, "--json").stdout)
    b = json.loads(cli("eval", lm_run, "--json", "--set", "batch_size=5").stdout)
    assert a["tokens"] == b["tokens"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_misspelled_sample_settings_are_refused_by_the_python_api(lm_run):
    import seqmodel

    run = seqmodel.load(lm_run)
    with pytest.raises(UserError, match=r"\[sample\] max_new_token: unknown key \(did you mean max_new_tokens\?\)"):
        run.generate("KING:", max_new_token=5)
    with pytest.raises(UserError, match=r"\[sample\] top_k"):
        run.generate("KING:", top_k=-5)


def test_a_capability_the_task_does_not_declare_is_a_one_line_error(lm_run):
    done = cli("predict", lm_run, "some.txt", check=False)
    error = one_line_error(done)
    assert "the 'lm' task cannot predict on files" in error and "it declares: eval_options, generate, metrics, sample, score" in error


def test_a_test_split_that_is_the_validation_split_is_not_silent(lm_run):
    done = cli("eval", lm_run, "--split", "test", "--json")
    assert "its test split is the validation split" in done.stderr
    assert json.loads(done.stdout) == json.loads(cli("eval", lm_run, "--json").stdout)
