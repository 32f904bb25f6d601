"""Tests for the Decision-Transformer episode data: collection, caching, the .npz layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqmodel_plugins import gym_data
from seqmodel_plugins.gym_data import Episode

from seqmodel.errors import UserError


def _episode(rng: np.random.Generator, t: int, continuous: bool = False) -> Episode:
    actions = rng.normal(size=(t, 2)).astype(np.float32) if continuous else rng.integers(0, 3, size=t)
    return Episode(rng.normal(size=(t, 4)).astype(np.float32), actions, rng.normal(size=t).astype(np.float32))


def _assert_same(a: list[Episode], b: list[Episode]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("states", "actions", "rewards"):
            u, v = getattr(x, name), getattr(y, name)
            assert u.dtype == v.dtype and u.shape == v.shape and np.array_equal(u, v)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=60))
def test_returns_to_go_matches_naive_reversed_loop(rewards):
    ep = Episode(np.zeros((len(rewards), 1)), np.zeros(len(rewards), dtype=np.int64), rewards)
    expected, acc = [], 0.0
    for r in reversed(ep.rewards.tolist()):
        acc += r
        expected.append(acc)
    expected = np.array(expected[::-1], dtype=np.float32)
    assert ep.returns_to_go.dtype == np.float32 and ep.returns_to_go.shape == (len(rewards),)
    np.testing.assert_allclose(ep.returns_to_go, expected, rtol=1e-6, atol=1e-3)
    assert ep.total_return == pytest.approx(float(np.sum(ep.rewards, dtype=np.float64)))


def test_returns_to_go_exact_for_unit_rewards():
    ep = Episode(np.zeros((500, 4)), np.zeros(500, dtype=np.int64), np.ones(500))
    assert np.array_equal(ep.returns_to_go, np.arange(500, 0, -1, dtype=np.float32))
    assert ep.total_return == 500.0


def test_episode_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="lengths differ"):
        Episode(np.zeros((3, 4)), np.zeros(2, dtype=np.int64), np.zeros(3))


def test_collect_is_deterministic_per_seed():
    a = gym_data.collect("CartPole-v1", 6, [0.3, 0.9], seed=7, progress=False)
    b = gym_data.collect("CartPole-v1", 6, [0.3, 0.9], seed=7, progress=False)
    c = gym_data.collect("CartPole-v1", 6, [0.3, 0.9], seed=8, progress=False)
    _assert_same(a, b)
    assert not all(len(x) == len(y) and np.array_equal(x.states, y.states) for x, y in zip(a, c))
    _assert_same(a[:3], gym_data.collect("CartPole-v1", 3, [0.3, 0.9], seed=7, progress=False))
    ep = a[0]
    assert ep.states.dtype == np.float32 and ep.states.shape == (len(ep), 4)
    assert ep.actions.dtype == np.int64 and ep.actions.shape == (len(ep),)
    assert ep.rewards.dtype == np.float32 and set(np.unique(ep.actions)) <= {0, 1}


def test_scripted_controller_balances_cartpole():
    episodes = gym_data.collect("CartPole-v1", 5, [0.0], seed=123, progress=False)
    assert np.mean([e.total_return for e in episodes]) >= 475


def test_default_dataset_has_mixed_quality():
    episodes = gym_data.collect(gym_data.DEFAULT_ENV_ID, gym_data.DEFAULT_EPISODES,
                                list(gym_data.DEFAULT_EPSILONS), seed=0, progress=False)
    stats = gym_data.return_stats(episodes)
    assert 150 <= stats["mean"] <= 250
    assert stats["frac_ge_450"] >= 0.15
    assert stats["min"] < 50


def test_random_policy_with_continuous_actions():
    episodes = gym_data.collect("Pendulum-v1", 2, [0.0], seed=0, policy="random", progress=False,
                                max_steps=30)
    assert [len(e) for e in episodes] == [30, 30]
    assert episodes[0].actions.dtype == np.float32 and episodes[0].actions.shape == (30, 1)
    assert episodes[0].states.shape == (30, 3)


def test_run_episode_passes_previous_reward_and_stops_at_max_steps():
    seen = []

    def act(t, state, info, reward):
        seen.append((t, reward, state.dtype))
        return gym_data.cartpole_controller(state)

    ep = gym_data.run_episode(gym_data.make_env("CartPole-v1"), act, seed=0, max_steps=10)
    assert len(ep) == 10
    assert seen == [(t, 0.0 if t == 0 else 1.0, np.float32) for t in range(10)]


@pytest.mark.parametrize("continuous", [False, True])
def test_npz_round_trip_is_exact(tmp_path, continuous):
    rng = np.random.default_rng(0)
    episodes = [_episode(rng, t, continuous) for t in (1, 5, 17)]
    path = gym_data.save_episodes(tmp_path / "sub" / "eps.npz", episodes)
    _assert_same(gym_data.load_episodes(path), episodes)
    assert sorted(p.name for p in path.parent.iterdir()) == ["eps.npz"]


def test_load_accepts_episode_lengths(tmp_path):
    rng = np.random.default_rng(1)
    episodes = [_episode(rng, t) for t in (3, 4)]
    np.savez(tmp_path / "l.npz", states=np.concatenate([e.states for e in episodes]),
             actions=np.concatenate([e.actions for e in episodes]).astype(np.int32),
             rewards=np.concatenate([e.rewards for e in episodes]), episode_lengths=np.array([3, 4]))
    _assert_same(gym_data.load_episodes(tmp_path / "l.npz"), episodes)


def _good_arrays() -> dict[str, np.ndarray]:
    return {"states": np.zeros((6, 4), np.float32), "actions": np.zeros(6, np.int64),
            "rewards": np.ones(6, np.float32), "episode_starts": np.array([0, 2, 4])}


@pytest.mark.parametrize("change, fragment", [
    ({"actions": np.zeros(5, np.int64)}, "'states' has 6 rows but 'actions' has 5"),
    ({"rewards": np.zeros(7, np.float32)}, "'rewards' has 7"),
    ({"states": None}, "missing array 'states'"),
    ({"episode_starts": None}, "exactly one of 'episode_starts' and 'episode_lengths'"),
    ({"episode_starts": np.array([0, 4, 2])}, "strictly increasing"),
    ({"episode_starts": np.array([1, 4])}, "must begin at 0"),
    ({"episode_starts": np.array([0, 6])}, "beyond the last"),
    ({"episode_starts": None, "episode_lengths": np.array([2, 2])}, "sum to the 6 steps"),
    ({"actions": np.zeros(6, np.float32)}, "discrete actions need integers"),
    ({"states": np.zeros(6, np.float32)}, "expected (N, S)"),
    ({"rewards": np.array([1, 1, np.nan, 1, 1, 1], np.float32)}, "NaN"),
])
def test_load_rejects_bad_files_in_one_line(tmp_path, change, fragment):
    arrays = {**_good_arrays(), **change}
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(UserError) as info:
        gym_data.load_episodes(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and fragment in message


@pytest.mark.parametrize("content", [None, b"not a zip file"])
def test_load_rejects_missing_or_corrupt_file(tmp_path, content):
    path = tmp_path / "x.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match="x.npz"):
        gym_data.load_episodes(path)


def test_unknown_env_id_suggests_close_matches():
    expected = r"unknown environment id 'CartPol-v1' \(gymnasium has e\.g\. .*CartPole-v1"
    with pytest.raises(UserError, match=expected):
        gym_data.make_env("CartPol-v1")
    with pytest.raises(UserError, match="unknown environment id"):
        gym_data.collect("NoSuchEnv-v0", 1, [0.0], seed=0, policy="random", progress=False)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"env_id": "Pendulum-v1"}, "no scripted controller"),
    ({"policy": "greedy"}, "unknown behaviour policy"),
    ({"epsilons": [1.5]}, "epsilons"),
    ({"n_episodes": 0}, "n_episodes"),
])
def test_collect_rejects_bad_arguments(kwargs, fragment):
    args = {"env_id": "CartPole-v1", "n_episodes": 1, "epsilons": [0.1], "seed": 0, "progress": False,
            **kwargs}
    with pytest.raises(UserError, match=fragment):
        gym_data.collect(**args)


def test_cached_collect_reuses_the_file(tmp_path, monkeypatch):
    args = ("CartPole-v1", 4, [0.5, 1.0], 3)
    first = gym_data.cached_collect(tmp_path, *args, progress=False)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"

    def fail(*a, **k):
        raise AssertionError("cache miss")

    monkeypatch.setattr(gym_data, "collect", fail)
    _assert_same(gym_data.cached_collect(tmp_path, *args, progress=False), first)
    monkeypatch.undo()
    _assert_same(gym_data.collect(*args, progress=False), first)
    gym_data.cached_collect(tmp_path, "CartPole-v1", 4, [0.5, 1.0], 4, progress=False)
    assert len(list(tmp_path.iterdir())) == 2


def test_return_histogram_png(tmp_path: Path):
    episodes = [Episode(np.zeros((t, 1)), np.zeros(t, dtype=np.int64), np.ones(t)) for t in (5, 9, 20)]
    path = gym_data.return_histogram_png(episodes, tmp_path / "plots" / "returns.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_array_header_claiming_40_terabytes_is_one_line(tmp_path):
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**13,)})
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        for name, array in {"states": np.zeros((4, 2)), "actions": np.zeros(4, dtype=np.int64),
                            "episode_lengths": np.array([4])}.items():
            buf = io.BytesIO()
            np.save(buf, array)
            z.writestr(f"{name}.npy", buf.getvalue())
        z.writestr("rewards.npy", header.getvalue() + b"\0" * 16)
    with pytest.raises(UserError, match=r"big.npz: not a readable .npz episode file \(") as err:
        gym_data.load_episodes(tmp_path / "big.npz")
    assert "\n" not in str(err.value)
