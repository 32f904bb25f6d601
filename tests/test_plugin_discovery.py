"""Plugin discovery with fake distributions: a broken plugin is reported with its entry point and
distribution and never hides the others (pluggy-style fakes, and a real dist-info on sys.path)."""

import importlib
import json
import sys
from dataclasses import dataclass

import pytest
from seqmodel_tokenizers.char import CharTokenizer

import seqmodel.registry as registry
from seqmodel.cli import main
from seqmodel.conformance import check_tokenizer
from seqmodel.errors import UserError
from seqmodel.registry import PluginError


class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """Quacks like importlib.metadata.EntryPoint; `load` returns `obj` or raises `error`."""

    def __init__(self, name, value, group, dist, obj=None, error=None) -> None:
        self.name, self.value, self.group, self.dist = name, value, group, dist
        self.obj, self.error = obj, error

    def load(self):
        if self.error is not None:
            raise self.error
        return self.obj


@dataclass
class SrcConfig:
    size: int = 3
    """How many examples."""


class GoodSource:
    Config = SrcConfig
    fields = ("text",)

    def __init__(self, config):
        self.config = config

    def split(self, name):
        return [{"text": "abc"}] * self.config.size

    def identity(self):
        return {"source": "good"}


class HalfTokenizer:
    Config = SrcConfig

    def spec(self):
        pass


def not_a_class():
    pass


@pytest.fixture
def fakes(monkeypatch):
    acme, other = FakeDist("acme-plugins", "2.0.1"), FakeDist("other-dist", "0.3")
    eps = [
        FakeEntryPoint("good", "acme.tok:Good", "seqmodel.tokenizers", acme, obj=CharTokenizer),
        FakeEntryPoint("crash", "acme.crash:Tok", "seqmodel.tokenizers", acme, error=RuntimeError("no GPU driver")),
        FakeEntryPoint("half", "other.half:HalfTokenizer", "seqmodel.tokenizers", other, obj=HalfTokenizer),
        FakeEntryPoint("func", "other.f:not_a_class", "seqmodel.tokenizers", other, obj=not_a_class),
        FakeEntryPoint("nodist", "x.y:Z", "seqmodel.tokenizers", None, error=ImportError("gone")),
        FakeEntryPoint("src", "acme.src:GoodSource", "seqmodel.sources", acme, obj=GoodSource),
        FakeEntryPoint("nomod", "acme.missing:Src", "seqmodel.sources", acme, error=ModuleNotFoundError("No module named 'acme.missing'")),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: [e for e in eps if e.group == group])
    return eps


def test_listing_reports_broken_plugins_without_hiding_others(fakes):
    rows = {(r.kind, r.name): r for r in registry.available()}
    assert set(rows) == {("tokenizer", n) for n in ("good", "crash", "half", "func", "nodist")} | {("source", "src"), ("source", "nomod")}
    assert rows["tokenizer", "good"].error is None and rows["source", "src"].error is None
    assert (rows["tokenizer", "good"].distribution, rows["tokenizer", "good"].version) == ("acme-plugins", "2.0.1")
    assert rows["tokenizer", "crash"].error == "RuntimeError: no GPU driver"
    assert "missing method(s): fit, encode, decode, save, load" in rows["tokenizer", "half"].error
    assert "expected a class, got function" in rows["tokenizer", "func"].error
    assert rows["tokenizer", "nodist"].distribution == "unknown distribution"
    assert rows["source", "nomod"].group == "seqmodel.sources"


@pytest.mark.parametrize("name, words", [
    ("crash", ["'crash'", "entry point 'acme.crash:Tok'", "seqmodel.tokenizers", "distribution acme-plugins 2.0.1",
               "failed to import: RuntimeError: no GPU driver"]),
    ("half", ["entry point 'other.half:HalfTokenizer'", "distribution other-dist 0.3", "is not a valid tokenizer",
              "missing method(s)"]),
    ("func", ["entry point 'other.f:not_a_class'", "distribution other-dist 0.3", "expected a class"]),
])
def test_load_error_names_entry_point_and_distribution(fakes, name, words):
    with pytest.raises(PluginError) as info:
        registry.load("tokenizer", name)
    for w in words:
        assert w in str(info.value)
    assert "\n" not in str(info.value)


def test_working_plugins_load_next_to_broken_ones(fakes):
    assert registry.load("tokenizer", "good") is CharTokenizer
    assert registry.load("source", "src") is GoodSource
    with pytest.raises(UserError, match="did you mean good"):
        registry.load("tokenizer", "goood")


def test_cli_lists_every_plugin(fakes, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    good = next(x for x in out if " good " in x)
    assert good.split()[:4] == ["seqmodel.tokenizers", "good", "acme-plugins", "2.0.1"] and good.endswith("ok")
    crash = next(x for x in out if " crash " in x)
    assert "BROKEN: RuntimeError: no GPU driver" in crash and "acme-plugins" in crash
    assert len(out) == 7
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["src"] == {"kind": "source", "name": "src", "value": "acme.src:GoodSource", "distribution": "acme-plugins",
                          "version": "2.0.1", "error": None, "group": "seqmodel.sources"}
    assert "missing method(s): fit, encode" in rows["half"]["error"]


def test_cli_check_on_fake_plugins(fakes, capsys):
    assert main(["plugins", "check", "good"]) == 0
    out = capsys.readouterr().out
    assert "PASS load ('good' from acme-plugins 2.0.1)" in out and out.rstrip().endswith("9/9 checks passed")
    assert main(["plugins", "check", "crash"]) == 1
    assert "FAIL load:" in capsys.readouterr().out


# -- a real distribution on sys.path (importlib.metadata reads its dist-info) --------------------
FAKE_MODULE = '''
from dataclasses import dataclass
from seqmodel_tokenizers.char import CharTokenizer


class ThirdPartyChar(CharTokenizer):
    """A third party's tokenizer: the char tokenizer under another name."""


class NoInterface:
    @dataclass
    class Config:
        pass
'''


@pytest.fixture
def dist_on_path(tmp_path, monkeypatch):
    info = tmp_path / "seqmodel_fakedist-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: seqmodel-fakedist\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(
        "[seqmodel.tokenizers]\nthirdparty = fakedist_mod:ThirdPartyChar\nnointerface = fakedist_mod:NoInterface\n"
        "importfails = fakedist_crash:Tok\n\n[seqmodel.tasks]\nghost = fakedist_ghost:Task\n")
    (tmp_path / "fakedist_mod.py").write_text(FAKE_MODULE)
    (tmp_path / "fakedist_crash.py").write_text("import not_a_real_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    for mod in ("fakedist_mod", "fakedist_crash"):
        sys.modules.pop(mod, None)


def test_real_metadata_discovery(dist_on_path):
    rows = {(r.kind, r.name): r for r in registry.available()}
    third = rows["tokenizer", "thirdparty"]
    assert (third.distribution, third.version, third.error) == ("seqmodel-fakedist", "1.2.3", None)
    assert rows["tokenizer", "char"].error is None and rows["tokenizer", "char"].distribution == "seqmodel"
    assert "No module named 'not_a_real_dependency_xyz'" in rows["tokenizer", "importfails"].error
    assert "missing method(s)" in rows["tokenizer", "nointerface"].error
    assert "fakedist_ghost" in rows["task", "ghost"].error
    with pytest.raises(PluginError, match=r"entry point 'fakedist_crash:Tok'.*distribution seqmodel-fakedist 1\.2\.3"):
        registry.load("tokenizer", "importfails")
    lines = []
    assert check_tokenizer("thirdparty", out=lines.append), "\n".join(lines)


def test_two_distributions_registering_one_name_is_reported(monkeypatch):
    from importlib.metadata import EntryPoint

    from seqmodel import registry
    from seqmodel.errors import UserError

    class Dist:
        def __init__(self, name):
            self.metadata, self.version = {"Name": name}, "1.0"

    eps = []
    for dist in ("pkg-a", "pkg-b"):
        ep = EntryPoint("dup", "seqmodel_tokenizers.char:CharTokenizer", "seqmodel.tokenizers")
        eps.append(ep._for(Dist(dist)) if hasattr(ep, "_for") else ep)
    ok = EntryPoint("char", "seqmodel_tokenizers.char:CharTokenizer", "seqmodel.tokenizers")
    monkeypatch.setattr(registry, "entry_points", lambda group: [*eps, ok] if group == "seqmodel.tokenizers" else [])
    monkeypatch.setattr(registry, "_CLASHES", {})
    try:
        registry.load("tokenizer", "dup")
    except UserError as err:
        assert "registered twice" in str(err) and "pkg-a" in str(err) and "pkg-b" in str(err)
    else:
        raise AssertionError("a clash must be an error")
    rows = {r.name: r for r in registry.available("tokenizer")}
    assert rows["char"].error is None and "registered twice" in rows["dup"].error
