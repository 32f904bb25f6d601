"""The Decision-Transformer pieces: sar tokenizer round trips, the interleaved batch against
`collate`, window sampling against a naive loop, causality, recipes, CLI errors and end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, cli
from hypothesis import given, settings
from hypothesis import strategies as st
from seqmodel_plugins.gym_data import Episode, save_episodes
from seqmodel_plugins.sources.episodes import split_episodes
from seqmodel_tokenizers.sar import SARConfig, SARTokenizer

from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError
from seqmodel.recipe.schema import load_recipe
from seqmodel.segments import collate
from seqmodel.task import Slice

RECIPES = ("decision_cartpole.toml", "decision_cartpole_bc.toml")
TINY = ["model.layers=1", "model.d_model=32", "model.heads=2", "data.n_episodes=12", "train.threads=1"]


def _episode(rng: np.random.Generator, t: int, continuous: bool) -> Episode:
    actions = rng.normal(size=(t, 2)).astype(np.float32) if continuous else rng.integers(0, 3, size=t)
    return Episode(rng.normal(3.0, 5.0, size=(t, 4)).astype(np.float32), actions, rng.normal(1.0, 2.0, size=t))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.booleans(), st.one_of(st.just(0.0), st.floats(0.01, 1000.0)))
def test_sar_round_trip_is_lossless(seed, t, continuous, scale):
    rng = np.random.default_rng(seed)
    tok = SARTokenizer(SARConfig(return_scale=scale), "ep")
    tok.fit([_episode(rng, 30, continuous), _episode(rng, 5, continuous)])
    ep = _episode(rng, t, continuous)
    segs = tok.encode_steps(ep)
    assert [s.modality for s in segs] == ["ep_return", "ep_state", "ep_action"]
    assert all(torch.equal(s.positions[:, 0], torch.arange(t).clamp(max=29)) for s in segs)
    back = tok.decode_steps(segs)
    np.testing.assert_allclose(back["returns_to_go"], ep.returns_to_go, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(back["states"], ep.states, rtol=1e-6, atol=1e-5)
    assert back["actions"].dtype == ep.actions.dtype and np.array_equal(back["actions"], ep.actions)


def test_sar_state_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    tok = SARTokenizer(SARConfig(), "rl")
    tok.fit([_episode(rng, 12, False)])
    tok.save(tmp_path)
    other = SARTokenizer(SARConfig(), "rl")
    other.load(tmp_path)
    assert other.specs() == tok.specs() and other.spec().name == "rl_state"
    ep = _episode(rng, 7, False)
    assert all(torch.equal(a.values if a.values is not None else a.ids, b.values if b.values is not None else b.ids)
               for a, b in zip(tok.encode_steps(ep), other.encode_steps(ep)))
    (tmp_path / "sar.json").write_text("{}")
    with pytest.raises(UserError, match="corrupt sar"):
        other.load(tmp_path)


def test_sar_rejects_unknown_action_ids():
    tok = SARTokenizer(SARConfig(), "rl")
    tok.fit([Episode(np.zeros((3, 2)), np.array([0, 1, 1]), np.ones(3))])
    with pytest.raises(UserError, match=r"ids in \[0, 2\)"):
        tok.encode_steps(Episode(np.zeros((2, 2)), np.array([0, 2]), np.ones(2)))


def test_episode_split_is_a_disjoint_cover():
    parts = split_episodes(50, 0.1, seed=3)
    assert len(parts["val"]) == 5 and np.array_equal(parts["val"], parts["test"])
    assert sorted([*parts["train"], *parts["val"]]) == list(range(50))
    assert np.array_equal(split_episodes(50, 0.1, seed=3)["val"], parts["val"])
    assert not np.array_equal(split_episodes(50, 0.1, seed=4)["val"], parts["val"])


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    cache = tmp_path_factory.mktemp("episodes")
    torch.manual_seed(0)
    recipe = load_recipe(REPO / "recipes" / RECIPES[0], [*TINY, f"data.cache_dir='{cache}'", "model.dropout=0.0"])
    p = Pipeline(recipe)
    p.fit()
    return p


def test_windows_match_a_naive_loop(pipe):
    eps = [ex["episode"] for ex in pipe.examples("train")]
    flat = [(e, t) for e, ep in enumerate(eps) for t in range(len(ep))]
    table, K = pipe.task.table("train"), pipe.task.K
    ends = torch.arange(len(flat))
    idx, valid = table.windows(ends, K)
    for g, (e, t) in enumerate(flat):
        start = max(0, t - K + 1)
        expected = [g - t + s for s in range(start, t + 1)]
        assert idx[g][valid[g]].tolist() == expected


def _collated(pipe, ends):
    """The same windows built the slow way: 3 one-token segments per timestep through `collate`."""
    eps = [ex["episode"] for ex in pipe.examples("train")]
    flat = [(ep, t) for ep in eps for t in range(len(ep))]
    rows = []
    for g in ends.tolist():
        ep, t = flat[g]
        segs = pipe.task.tok.encode_steps(ep, max(0, t - pipe.task.K + 1), t + 1)
        rows.append([s.slice(k, k + 1) for k in range(len(segs[0])) for s in segs])
    return collate(rows)


def _names(ts, cut: int) -> list[list[str]]:
    return [[ts.modalities[c] for c in row[row >= 0].tolist()] for row in ts.modality[:, :cut]]


def test_direct_batch_equals_collate(pipe):
    task = pipe.task
    ends = torch.randint(len(task.table("train")), (16,), generator=torch.Generator().manual_seed(1))
    fast, slow = task.build_batch(task.table("train"), ends), _collated(pipe, ends)
    assert torch.equal(fast.valid[:, : slow.shape[1]], slow.valid) and not fast.valid[:, slow.shape[1]:].any()
    v = slow.valid
    assert torch.equal(fast.time[:, : v.shape[1]][v], slow.time[v])
    assert _names(fast, v.shape[1]) == _names(slow, v.shape[1])
    for name, s in slow.inputs.items():
        f, ok = fast.inputs[name], s.valid
        assert torch.equal(f.slot[:, : ok.shape[1]][ok], s.slot[ok])
        assert torch.equal(f.positions[:, : ok.shape[1]][ok], s.positions[ok])
        data = (f.ids, s.ids) if s.ids is not None else (f.values, s.values)
        assert torch.equal(data[0][:, : ok.shape[1]][ok], data[1][ok])
    core = pipe.module.core.eval()
    with torch.no_grad():
        a, b = core(fast)[:, : v.shape[1]][v], core(slow)[v]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_actions_are_predicted_from_the_past_only(pipe):
    task, module = pipe.task, pipe.module.eval()
    ts = task.batches("train", True).batch(Slice(0, 0, 0, 8, 8))
    t = 4
    with torch.no_grad():
        before = task.predict_actions(module.core, module.head, ts)
        names = task.tok.names
        ts.inputs[names["action"]].ids[:, t:] = 1 - ts.inputs[names["action"]].ids[:, t:]
        ts.inputs[names["state"]].values[:, t + 1 :] += 3.0
        ts.inputs[names["return"]].values[:, t + 1 :] -= 0.5
        after = task.predict_actions(module.core, module.head, ts)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1])
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


def test_loss_is_cross_entropy_at_state_tokens(pipe):
    task, module = pipe.task, pipe.module.eval()
    ts = task.batches("val", False).batch(Slice(0, 0, 0, 8, 8))
    with torch.no_grad():
        loss, _ = task.loss(module.core, module.head, ts)
        logits = task.predict_actions(module.core, module.head, ts)
    st = ts.inputs[task.tok.names["state"]]
    naive = [-torch.log_softmax(logits[b, k], -1)[st.targets[b, k]] for b in range(8) for k in range(task.K) if st.loss_mask[b, k]]
    torch.testing.assert_close(loss, torch.stack(naive).mean())


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_parse_and_build_a_tiny_model(name, tmp_path):
    text = (REPO / "recipes" / name).read_text()
    assert text.startswith(f"# seqmodel run recipes/{name}\n")
    recipe = load_recipe(REPO / "recipes" / name, [*TINY, f"data.cache_dir='{tmp_path}'"])
    p = Pipeline(recipe)
    p.fit()
    expected = {"episode_state", "episode_action"} | ({"episode_return"} if recipe.task.config.condition else set())
    assert set(p.module.core.specs) == expected
    loss, stats = p.module(p.task.batches("train", True).batch(Slice(0, 0, 0, 4, 4)))
    assert torch.isfinite(loss) and stats["tokens"] > 0


def test_a_non_causal_mask_is_refused(tmp_path):
    recipe = load_recipe(REPO / "recipes" / RECIPES[0], [*TINY, f"data.cache_dir='{tmp_path}'", "model.mask='full'"])
    with pytest.raises(UserError, match="lets a token see later ones"):
        Pipeline(recipe).fit()


def test_continuous_actions_train_and_play(tmp_path):
    recipe = load_recipe(REPO / "recipes" / RECIPES[0], [
        *TINY, f"data.cache_dir='{tmp_path}'", "data.env_id='Pendulum-v1'", "data.policy='random'",
        "data.max_steps=30", "task.max_episode_steps=7"])
    p = Pipeline(recipe)
    p.fit()
    assert p.module.core.specs["episode_action"].width == 1
    loss, _ = p.module(p.task.batches("train", True).batch(Slice(0, 0, 0, 4, 4)))
    assert torch.isfinite(loss)
    returns, lengths = p.task.rollout(p.module.eval(), -100.0, 2)
    assert lengths.tolist() == [7, 7] and np.all(np.isfinite(returns))


def _one_line_error(done) -> str:
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "collecting" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_unknown_environment_is_a_one_line_error(tmp_path):
    done = cli("run", REPO / "recipes" / RECIPES[0], "--out", tmp_path / "run", "--set", "data.env_id='CartPol-v1'",
               "--set", f"data.cache_dir='{tmp_path}'", check=False)
    line = _one_line_error(done)
    assert "decision_cartpole.toml: [data]" in line and "unknown environment id 'CartPol-v1'" in line and "CartPole-v1" in line


def test_mismatched_episode_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, states=np.zeros((5, 4)), actions=np.zeros(4, dtype=np.int64), rewards=np.ones(5),
             episode_lengths=np.array([5]))
    done = cli("run", REPO / "recipes" / RECIPES[1], "--out", tmp_path / "run", "--set", f"data.path='{bad}'", check=False)
    line = _one_line_error(done)
    assert str(bad) in line and "'states' has 5 rows but 'actions' has 4" in line


def test_run_and_eval_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [Episode(rng.normal(size=(n, 4)) * 0.05, rng.integers(0, 2, size=n), np.ones(n)) for n in (30, 60, 90, 12)]
    data = save_episodes(tmp_path / "eps.npz", episodes)
    run = tmp_path / "run"
    cli("run", REPO / "recipes" / RECIPES[0], "--out", run, "--no-progress", "--set", f"data.path='{data}'",
        *[f"--set={s}" for s in TINY[:3]], "--set", "train.steps=12", "--set", "train.eval_every=6",
        "--set", "train.eval_batches=2", "--set", "train.batch_size=8", "--set", "train.threads=1",
        "--set", "task.report_targets=[50, 500]", "--set", "task.report_episodes=2")
    for name in ("returns_vs_target.png", "dataset_returns.png", "loss.png"):
        assert (run / name).stat().st_size > 1000
    evaluations = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [6, 12] and all(r["mean_return"] > 0 for r in evaluations)
    rows = json.loads((run / "returns_vs_target.json").read_text())
    assert [r["target"] for r in rows] == [50, 500] and all(len(r["returns"]) == 2 for r in rows)
    out = json.loads(cli("eval", run, "--set", "episodes=3", "--set", "target_return=500", "--json").stdout)
    assert out["episodes"] == 3 and out["target_return"] == 500 and out["greedy"] is False
    assert 1 <= out["min_return"] <= out["mean_return"] <= out["max_return"] <= 500
    assert np.isfinite(out["action_loss"])
    again = json.loads(cli("eval", run, "--set", "episodes=3", "--set", "target_return=500", "--json").stdout)
    assert again["mean_return"] == out["mean_return"]
    shown = cli("tokenize", run, "--text", "left", check=False)
    assert shown.returncode != 0 and "Traceback" not in shown.stderr
    assert "no tokenizer of this run turns text into ids" in shown.stderr and shown.stderr.count("\n") == 1


@pytest.mark.slow
def test_decision_transformer_reaches_its_target(tmp_path):
    """The shipped recipe: return 500 asked, >= 450 reached (about 10 minutes on 2 CPU cores)."""
    run = tmp_path / "dt"
    cli("run", REPO / "recipes" / RECIPES[0], "--out", run, "--no-progress", "--set", "train.threads=2")
    out = json.loads(cli("eval", run, "--set", "episodes=20", "--set", "target_return=500", "--json").stdout)
    assert out["mean_return"] >= 450, out
    low = json.loads(cli("eval", run, "--set", "episodes=20", "--set", "target_return=100", "--json").stdout)
    assert out["mean_return"] - low["mean_return"] >= 150, (low, out)


def _episode_recipe(tmp_path, data_env: str, states, actions, **task) -> Path:
    """A tiny decision recipe over a user's .npz of 4 episodes of 10 steps (arrays as given)."""
    n = len(states)
    np.savez(tmp_path / "mine.npz", states=states, actions=actions, rewards=-np.ones(n, dtype=np.float32),
             episode_lengths=np.full(n // 10, 10))
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in task.items())
    path = tmp_path / "mine.toml"
    path.write_text(f'[model]\nlayers = 1\nd_model = 16\nheads = 2\ncontext = 15\n[train]\nsteps = 2\nbatch_size = 4\n'
                    f'threads = 1\n[data]\nsource = "gym_episodes"\nenv_id = "{data_env}"\npath = "mine.npz"\n'
                    f'val_fraction = 0.25\n[tokenizer]\nkind = "sar"\nfield = "episode"\n[task]\nkind = "decision"\n'
                    f'context_steps = 5\nreport_targets = []\n{extra}')
    return path


RNG = np.random.default_rng(0)
STATES2, STATES3 = RNG.normal(size=(40, 2)).astype(np.float32), RNG.normal(size=(40, 3)).astype(np.float32)
IDS3 = RNG.integers(0, 3, size=40)


@pytest.mark.parametrize("env_id, states, actions, expected", [
    ("MountainCar-v0", STATES2, IDS3[:, None].astype(np.float32), "vectors of 1 number(s) per step, but env_id "
     "'MountainCar-v0' has 3 discrete actions (ids 0 to 2): discrete actions are stored as integer ids, shape (N,)"),
    ("MountainCar-v0", STATES2, np.where(IDS3 == 2, 4, IDS3), "integer ids from 0 to 4, but env_id 'MountainCar-v0' "
     "has 3 discrete actions (ids 0 to 2)"),
    ("MountainCar-v0", STATES3, IDS3, "states have 3 number(s) per step, but the observations of env_id 'MountainCar-v0' "
     "flatten to 2"),
    ("Pendulum-v1", STATES3, IDS3, "actions are integer ids from 0 to 2, but env_id 'Pendulum-v1' has continuous "
     "actions of 1 number(s) per step: its actions are stored as floats, shape (N, 1)"),
    ("Pendulum-v1", STATES3, RNG.normal(size=(40, 2)).astype(np.float32), "vectors of 2 number(s) per step"),
], ids=["floats for Discrete(3)", "id 4 for Discrete(3)", "3 state numbers for 2", "ids for a Box", "width 2 for 1"])
def test_check_refuses_episodes_that_do_not_fit_the_environment(tmp_path, env_id, states, actions, expected):
    done = cli("check", _episode_recipe(tmp_path, env_id, states, actions), check=False)
    line = _one_line_error(done)
    assert f"[data] path: {tmp_path / 'mine.npz'}: the episodes' " in line and expected in line
    assert "ModalitySpec" not in line


def test_check_refuses_a_task_environment_that_does_not_fit_the_run(tmp_path):
    done = cli("check", _episode_recipe(tmp_path, "MountainCar-v0", STATES2, IDS3, env_id="Acrobot-v1"), check=False)
    assert _one_line_error(done).endswith("[task] env_id 'Acrobot-v1' (where evaluation plays): this run's states "
                                          "have 2 number(s) per step, but the observations of the environment flatten to 6")
    done = cli("check", _episode_recipe(tmp_path, "MountainCar-v0", STATES2, IDS3), "--set", "tokenizer.num_actions=5",
               check=False)
    assert "this run's actions are integer ids from 0 to 4, but the environment has 3 discrete actions" in _one_line_error(done)


@pytest.mark.parametrize("env_id, states, actions", [("MountainCar-v0", STATES2, IDS3),
                                                     ("Pendulum-v1", STATES3, RNG.normal(size=(40, 1)).astype(np.float32))])
def test_episodes_that_fit_their_environment_pass_check(tmp_path, env_id, states, actions):
    assert "ok (decoder" in cli("check", _episode_recipe(tmp_path, env_id, states, actions)).stdout
