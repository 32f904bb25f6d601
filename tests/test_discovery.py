"""Finding one's way without the source: every key of every plugin documented and listed, the
resolved recipe printed as annotated TOML, shipped recipes by name (also from a built wheel),
a table of runs, shell completion."""

import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from conftest import REPO, cli, one_line_error, tiny_char_recipe

import seqmodel
from seqmodel import registry
from seqmodel.model.config import ModelConfig, SampleConfig
from seqmodel.recipe.render import field_docs
from seqmodel.recipe.schema import TrainConfig, load_recipe, parse_recipe
from seqmodel.task import can

BUILT_IN = [r for r in registry.available(check=False) if r.distribution == "seqmodel"]


def config_classes():
    yield "ModelConfig", ModelConfig
    yield "TrainConfig", TrainConfig
    yield "SampleConfig", SampleConfig
    for info in BUILT_IN:
        cls = registry.load(info.kind, info.name)
        yield f"{info.kind} {info.name}", cls.Config
        if info.kind == "task" and can(cls, "eval_options"):
            yield f"task {info.name} EvalOptions", cls.EvalOptions


@pytest.mark.parametrize("label, cls", list(config_classes()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_config_field_has_a_docstring(label, cls):
    missing = [name for name, doc in field_docs(cls).items() if not doc]
    assert not missing, f"{label}: fields without a docstring: {missing}"


@pytest.mark.parametrize("info", BUILT_IN, ids=lambda i: f"{i.kind}-{i.name}")
def test_plugins_show_lists_every_key_with_its_docstring(info):
    out = cli("plugins", "show", info.name).stdout
    cls = registry.load(info.kind, info.name)
    assert f"{info.kind} plugin {info.name!r}" in out
    for f in dataclasses.fields(cls.Config):
        line = next(x for x in out.splitlines() if x.lstrip("# ").startswith(f"{f.name} = "))
        assert field_docs(cls.Config)[f.name] in line


def test_plugins_show_hf_and_an_unknown_name():
    out = cli("plugins", "show", "hf").stdout
    for key in ("name", "data_files", "text_field", "image_field", "label_field", "streaming", "val_fraction"):
        assert any(line.lstrip("# ").startswith(f"{key} = ") for line in out.splitlines()), key
    assert "no plugin named 'hff'" in one_line_error(cli("plugins", "show", "hff", check=False))


def test_check_print_is_toml_that_reproduces_the_recipe(tmp_path, corpus):
    recipe = tiny_char_recipe(tmp_path, corpus)
    out = cli("check", recipe, "--print", "--set", "model.layers=3").stdout
    text = out[: out.rindex("\n", 0, out.rindex(": ok ("))]  # the annotated TOML, before the "ok" line
    raw = tomllib.loads(text)
    again = parse_recipe(raw, "printed.toml")
    assert again.resolved() == load_recipe(recipe, ["model.layers=3"]).resolved()
    assert "# integer: Blocks in the main stack" in out


def test_shipped_recipes_are_listed_and_run_by_name():
    out = cli("recipes").stdout
    names = [line.split()[0] for line in out.splitlines()]
    assert names == sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))
    assert "A character-level GPT on Shakespeare" in out
    assert "vit_patches.toml: ok" in cli("check", "vit_patches").stdout
    assert "no shipped recipe of that name" in one_line_error(cli("check", "vit_patchez", check=False))


def test_a_built_wheel_carries_the_recipes(tmp_path):
    pytest.importorskip("hatchling")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("seqmodel-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    done = subprocess.run([sys.executable, "-c", "from seqmodel.recipe.presets import shipped; print(sorted(shipped()))"],
                          cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "'char_lm'" in done.stdout and "'vit_patches'" in done.stdout
    assert str(site) in subprocess.run([sys.executable, "-c", "import seqmodel.recipe.presets as p; print(p.shipped()['char_lm'])"],
                                       cwd=tmp_path, env={"PYTHONPATH": str(site)}, capture_output=True, text=True).stdout


def test_runs_table_and_python_api_with_a_dict(tmp_path, corpus):
    raw = tomllib.loads(tiny_char_recipe(tmp_path, corpus, steps=4, eval_every=2).read_text())
    run = seqmodel.run(raw, ["train.log_every=1"], out=tmp_path / "runs" / "from-dict", progress=False)
    assert run.dir == tmp_path / "runs" / "from-dict"
    rows = json.loads(cli("runs", tmp_path / "runs", "--json").stdout)
    assert [Path(r["run"]).name for r in rows] == ["from-dict"]
    assert rows[0]["step"] == 4 and rows[0]["task"] == "lm" and rows[0]["best_val_loss"] > 0
    table = cli("runs", tmp_path / "runs").stdout
    assert "from-dict" in table and "4/4" in table


def test_shell_completion_scripts():
    for shell in ("bash", "zsh"):
        script = cli("completion", shell).stdout
        assert "seqmodel" in script and "recipes" in script and "--no-progress" in script
