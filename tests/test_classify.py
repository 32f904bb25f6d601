"""Classify task on image patches: permutation invariance, padding, metrics, labels, the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO

from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError
from seqmodel.recipe.schema import load_recipe
from seqmodel.segments import Segment, collate

RECIPE = REPO / "recipes" / "vit_patches.toml"
TINY = ["model.layers=2", "model.d_model=32", "model.heads=2", "model.dropout=0.0", "train.threads=1"]


def pipeline(*overrides: str) -> Pipeline:
    pipe = Pipeline(load_recipe(RECIPE, [*TINY, *overrides]))
    pipe.fit()
    torch.manual_seed(0)
    pipe.module.eval()
    return pipe


@pytest.fixture(scope="module")
def mean_pipe() -> Pipeline:
    return pipeline()


def logits_of(pipe: Pipeline, examples: list[list[Segment]]) -> torch.Tensor:
    with torch.no_grad():
        return pipe.task.logits(pipe.module.core, pipe.module.head, collate(examples))


def test_recipe_parses_and_builds_a_tiny_model():
    assert RECIPE.read_text().splitlines()[0] == "# seqmodel run recipes/vit_patches.toml"
    recipe = load_recipe(RECIPE)
    assert recipe.model.arch == "encoder" and recipe.model.mask == "full" and recipe.data.name == "digits"
    assert recipe.data.config.test_fraction >= 0.15
    pipe = pipeline()
    assert 0 < pipe.module.core.num_parameters() < 100_000
    tok = pipe.tokenizers["image"]
    assert tok.spec().width == tok.config.patch ** 2 * tok.channels and len(tok.encode(pipe.examples("val")[0]["image"])) == 16


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_permuting_patch_tokens_keeps_the_prediction(pool, mean_pipe):
    pipe = mean_pipe if pool == "mean" else pipeline("task.pool=\"cls\"")
    image = pipe.examples("test")[0]["image"]
    base = pipe.task.segments(image)
    seg = base[-1]
    g = torch.Generator().manual_seed(1)
    perms = [torch.randperm(len(seg), generator=g) for _ in range(3)]
    moved = [base[:-1] + [Segment("image", values=seg.values[p], positions=seg.positions[p])] for p in perms]
    out = logits_of(pipe, [base, *moved])
    assert torch.allclose(out[1:], out[:1].expand(3, -1), atol=1e-5, rtol=1e-5)
    values_only = base[:-1] + [Segment("image", values=seg.values[perms[0]], positions=seg.positions)]
    assert not torch.allclose(logits_of(pipe, [values_only]), out[:1], atol=1e-4)  # positions do matter


def test_padding_does_not_change_the_mean_pooled_prediction(mean_pipe):
    images = [ex["image"] for ex in mean_pipe.examples("val")[:3]]
    sets = [[mean_pipe.task.segments(im)[0].slice(0, n)] for im, n in zip(images, (16, 9, 4))]
    together = logits_of(mean_pipe, sets)
    alone = torch.cat([logits_of(mean_pipe, [s]) for s in sets])
    assert torch.allclose(together, alone, atol=1e-5, rtol=1e-5)


def test_evaluate_matches_one_by_one_predictions(mean_pipe):
    task = mean_pipe.task
    task.config.eval_batch_size = 40
    metrics = mean_pipe.evaluate("val", limit=2)
    items = task.items("val")[:80]
    preds = [int(logits_of(mean_pipe, [task.segments(v)]).argmax()) for v, _ in items]
    right = [p == y for p, (_, y) in zip(preds, items)]
    assert metrics["examples"] == 80 and metrics["accuracy"] == pytest.approx(sum(right) / 80)
    for k, name in enumerate(task.label_names):
        hits = [r for r, (_, y) in zip(right, items) if y == k]
        if hits:
            assert metrics["per_class_accuracy"][name] == pytest.approx(sum(hits) / len(hits))
    assert metrics["loss"] > 0
    with pytest.raises(UserError, match="eval --set episodes: the 'classify' task takes no evaluation options"):
        mean_pipe.evaluate("val", episodes=3)


def test_training_batches_are_deterministic_and_augmented(mean_pipe):
    from seqmodel.task import Slice

    train = mean_pipe.task.batches("train", True)
    a, b = train.batch(Slice(5, 0, 0, 8, 8)), train.batch(Slice(5, 0, 0, 8, 8))
    assert torch.equal(a.inputs["image"].values, b.inputs["image"].values)
    assert torch.equal(a.extras["labels"], b.extras["labels"])
    items = [mean_pipe.task.items("train")[i] for i in train.indices(Slice(5, 0, 0, 8, 8))]
    clean = torch.stack([mean_pipe.task.segments(v)[0].values for v, _ in items])
    assert not torch.equal(a.inputs["image"].values, clean)  # the recipe augments (shift, rotation, zoom)
    assert a.extras["labels"].tolist() == [y for _, y in items]


def test_label_names_travel_with_the_task(mean_pipe, tmp_path):
    task = mean_pipe.task
    assert task.label_names[3] == "three" and task.build_head(32).out_features == 10
    task.save(tmp_path)
    other = type(task)(task.config)
    other.load(tmp_path)
    assert other.label_names == task.label_names
    assert task.label_index("seven") == 7 and task.label_index(2) == 2
    for bad in (10, -1, "eleven", 2.5):
        with pytest.raises(UserError, match="label_field"):
            task.label_index(bad)
    (tmp_path / "labels.json").write_text("[]")
    with pytest.raises(UserError, match="corrupt"):
        other.load(tmp_path)


def test_task_config_mistakes_name_the_key(tmp_path):
    with pytest.raises(UserError, match=r"\[task\] pool:"):
        load_recipe(RECIPE, ['task.pool="max"'])
    with pytest.raises(UserError, match=r"\[task\] num_classes: 7"):
        pipeline("task.num_classes=7")
    with pytest.raises(UserError, match=r"\[task\] label_field: the source has no field 'digit'"):
        pipeline('task.label_field="digit"')


def test_report_draws_the_confusion_matrix_and_examples(mean_pipe, tmp_path):
    mean_pipe.task.config.report_images = 12
    paths = mean_pipe.task.report(mean_pipe.module.eval(), tmp_path)
    assert {Path(p).name for p in paths} == {"confusion_matrix.png", "val_predictions.png"}
    assert all(Path(p).stat().st_size > 1000 for p in paths)
