"""Episodes from gymnasium environments for the Decision-Transformer recipe.

The recipe's default data set is CartPole-v1 played by a scripted linear controller with
epsilon-random actions; cycling epsilon over several values gives a data set of mixed quality
(near-expert, mediocre and random play), the setting in which return-conditioned policies help.
Users bring their own episodes as a ``.npz`` file (see `load_episodes`). Offline-RL data sets from
`minari` can be converted to that layout; this module does not depend on it.

References:
    Chen et al., "Decision Transformer: Reinforcement Learning via Sequence Modeling", 2021.
    Towers et al., "Gymnasium: A Standardized Interface for Reinforcement Learning Environments", 2024.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from tqdm.auto import tqdm

from seqmodel.errors import UserError

FORMAT_VERSION = 1
"""Version of the cache key and of the scripted controller; bump to invalidate cached data."""

DEFAULT_ENV_ID = "CartPole-v1"
DEFAULT_EPISODES = 1500
DEFAULT_EPSILONS = (0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
"""On CartPole-v1: mean return ~190, ~25 % of episodes >= 450, median ~90 (checked by a test)."""

POLICIES = ("scripted", "random")

Act = Callable[[int, np.ndarray, dict[str, Any], float], Any]
"""``act(t, state, info, reward) -> action``: step index, flattened float32 state, the info dict
from reset/step, and the reward of the previous step (0.0 at t = 0)."""


@dataclass
class Episode:
    """One episode: per step, the state seen, the action taken and the reward received.

    Attributes:
        states: (T, S) float32 flattened observations.
        actions: (T,) int64 for discrete actions or (T, A) float32 for continuous ones.
        rewards: (T,) float32.
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray

    def __post_init__(self) -> None:
        self.states = np.asarray(self.states, dtype=np.float32)
        discrete = np.issubdtype(np.asarray(self.actions).dtype, np.integer)
        self.actions = np.asarray(self.actions, dtype=np.int64 if discrete else np.float32)
        self.rewards = np.asarray(self.rewards, dtype=np.float32)
        if self.states.ndim != 2 or self.rewards.ndim != 1 or self.actions.ndim != (1 if discrete else 2):
            raise ValueError(
                f"Episode wants states (T, S), actions (T,) int or (T, A) float, rewards (T,); got "
                f"{self.states.shape}, {self.actions.shape} {self.actions.dtype}, {self.rewards.shape}"
            )
        if not len(self.states) == len(self.actions) == len(self.rewards):
            raise ValueError(
                f"Episode lengths differ: states {len(self.states)}, actions {len(self.actions)}, "
                f"rewards {len(self.rewards)}"
            )

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def returns_to_go(self) -> np.ndarray:
        """(T,) float32: ``rtg[t] = sum(rewards[t:])``, accumulated in float64 then rounded once."""
        return np.cumsum(self.rewards[::-1], dtype=np.float64)[::-1].astype(np.float32)

    @property
    def total_return(self) -> float:
        """The undiscounted sum of the episode's rewards."""
        return float(np.sum(self.rewards, dtype=np.float64))


def make_env(env_id: str, **kwargs: Any) -> gymnasium.Env:
    """Create a gymnasium environment, turning a bad id into a one-line `UserError`.

    Args:
        env_id: a registered gymnasium id such as ``"CartPole-v1"``.
        **kwargs: passed on to `gymnasium.make`.

    Raises:
        UserError: the id is unknown (with close matches), or the environment needs a missing
            optional dependency, or gymnasium rejects the id.
    """
    try:
        return gymnasium.make(env_id, **kwargs)
    except gymnasium.error.UnregisteredEnv:
        suggestions = _close_ids(env_id)
        raise UserError(f"unknown environment id {env_id!r} (gymnasium has e.g. {suggestions})") from None
    except gymnasium.error.DependencyNotInstalled as e:
        raise UserError(f"environment {env_id!r} needs an optional dependency: {e}") from None
    except gymnasium.error.Error as e:
        raise UserError(f"cannot create environment {env_id!r}: {e}") from None


def _close_ids(env_id: str) -> str:
    ids = sorted(gymnasium.registry)
    by_lower = {i.lower(): i for i in ids}
    close = difflib.get_close_matches(str(env_id).lower(), list(by_lower), n=5, cutoff=0.5)
    picks = [by_lower[c] for c in close] or ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1"]
    return ", ".join(picks) + ", ..."


def action_space_words(space: spaces.Space) -> str:
    """An action space as a user reads it: "3 discrete actions (ids 0 to 2)"."""
    if isinstance(space, spaces.Discrete):
        first = int(space.start)
        return f"{int(space.n)} discrete actions (ids {first} to {first + int(space.n) - 1})"
    if isinstance(space, spaces.Box):
        return f"continuous actions of {int(np.prod(space.shape))} number(s) per step"
    return f"a {type(space).__name__} action space (episodes support Discrete and Box actions)"


def actions_words(discrete: bool, width: int, ids: tuple[int, int] | None = None) -> str:
    """Actions of the data or of a run as a user reads them."""
    if not discrete:
        return f"vectors of {width} number(s) per step"
    return "integer ids" + (f" from {ids[0]} to {ids[1]}" if ids is not None else "")


def action_problem(space: spaces.Space, discrete: bool, width: int, ids: tuple[int, int] | None = None,
                   subject: str = "the actions", env: str = "the environment") -> str | None:
    """Why actions of this kind cannot be played in `space`, or None.

    Args:
        space: the environment's action space.
        discrete: the actions are integer ids (else float vectors of `width` numbers).
        width: numbers per continuous action (ignored for ids).
        ids: the smallest and largest id, when known.
        subject, env: how the message names the actions and the environment.
    """
    have = f"{subject} are {actions_words(discrete, width, ids)}, but {env} has {action_space_words(space)}"
    if isinstance(space, spaces.Discrete):
        if not discrete:
            return f"{have}: discrete actions are stored as integer ids, shape (N,)"
        first = int(space.start)
        if ids is not None and (ids[0] < first or ids[1] > first + int(space.n) - 1):
            return have
        return None
    if isinstance(space, spaces.Box):
        need = int(np.prod(space.shape))
        if discrete or width != need:
            return f"{have}: its actions are stored as floats, shape (N, {need})"
        return None
    return have


def env_problem(env: gymnasium.Env, state_width: int, discrete: bool, width: int, ids: tuple[int, int] | None = None,
                subject: str = "the", name: str = "the environment") -> str | None:
    """Why steps with `state_width` numbers per state and these actions (see `action_problem`)
    cannot come from `env`, or None; `subject` and `name` word the message ("'states'" ...)."""
    expected = spaces.flatdim(env.observation_space)
    if state_width != expected:
        return (f"{subject} states have {state_width} number(s) per step, but the observations of {name} "
                f"flatten to {expected}")
    return action_problem(env.action_space, discrete, width, ids, f"{subject} actions", name)


def episodes_env_problem(episodes: Sequence[Episode], env_id: str) -> str | None:
    """Why `episodes` cannot have been played in environment `env_id`, or None: the width of the
    states against its observations, the kind, width and ids of the actions against its actions."""
    actions = np.concatenate([e.actions for e in episodes])
    discrete = actions.ndim == 1
    ids = (int(actions.min()), int(actions.max())) if discrete and actions.size else None
    env = make_env(env_id)
    try:
        return env_problem(env, episodes[0].states.shape[1], discrete, 0 if discrete else actions.shape[1], ids,
                           "the episodes'", f"env_id {env_id!r}")
    finally:
        env.close()


def cartpole_controller(obs: np.ndarray) -> int:
    """A linear CartPole controller: push towards where the pole is falling, keep the cart centred.

    With no noise it keeps the pole up for all 500 steps of CartPole-v1 from every start tried.

    Args:
        obs: CartPole observation ``(x, x_dot, theta, theta_dot)``.

    Returns:
        1 (push right) or 0 (push left).
    """
    x, x_dot, theta, theta_dot = (float(v) for v in obs[:4])
    return int(0.05 * x + 0.2 * x_dot + theta + 0.5 * theta_dot > 0.0)


def run_episode(env: gymnasium.Env, act: Act, seed: int | None, max_steps: int | None = None) -> Episode:
    """Roll one episode of ``env`` with ``act`` choosing the actions.

    Args:
        env: a gymnasium environment with a Discrete or Box action space.
        act: ``act(t, state, info, reward) -> action`` (see `Act`); ``state`` is the flattened
            float32 observation, exactly as stored in the returned `Episode`.
        seed: seed for ``env.reset``.
        max_steps: stop after this many steps even if the environment has not ended.

    Returns:
        The episode's states, actions and rewards.
    """
    space = env.action_space
    if not isinstance(space, spaces.Discrete | spaces.Box):
        raise UserError(f"environment {_env_name(env)!r} has a {type(space).__name__} action space; "
                        "episodes support Discrete and Box actions")
    discrete = isinstance(space, spaces.Discrete)
    obs, info = env.reset(seed=seed)
    states, actions, rewards = [], [], []
    reward, t = 0.0, 0
    while max_steps is None or t < max_steps:
        state = spaces.flatten(env.observation_space, obs).astype(np.float32)
        action = act(t, state, info, reward)
        action = int(action) if discrete else np.asarray(action, dtype=np.float32).reshape(space.shape)
        obs, reward, terminated, truncated, info = env.step(action)
        reward = float(reward)
        states.append(state)
        actions.append(action if discrete else action.reshape(-1))
        rewards.append(reward)
        t += 1
        if terminated or truncated:
            break
    n_state = spaces.flatdim(env.observation_space)
    n_action = 0 if discrete else int(np.prod(space.shape))
    return Episode(
        states=np.asarray(states, dtype=np.float32).reshape(t, n_state),
        actions=np.asarray(actions, dtype=np.int64) if discrete
        else np.asarray(actions, dtype=np.float32).reshape(t, n_action),
        rewards=np.asarray(rewards, dtype=np.float32),
    )


def _env_name(env: gymnasium.Env) -> str:
    return env.spec.id if env.spec is not None else type(env.unwrapped).__name__


def collect(
    env_id: str,
    n_episodes: int,
    epsilons: Sequence[float],
    seed: int,
    policy: str = "scripted",
    progress: bool = True,
    max_steps: int | None = None,
) -> list[Episode]:
    """Collect episodes with an epsilon-random behaviour policy.

    Episode ``i`` uses ``epsilons[i % len(epsilons)]``: at each step, with that probability the
    action is drawn uniformly from the action space instead of taken from the policy. Episode ``i``
    draws its reset seed and its noise from ``numpy.random.SeedSequence([seed, i])``, so the
    result depends only on the arguments, and a longer collection extends a shorter one.

    Args:
        env_id: gymnasium id; the ``"scripted"`` policy needs a CartPole environment.
        n_episodes: number of episodes.
        epsilons: probabilities of a random action, each in [0, 1], cycled over episodes.
        seed: base seed.
        policy: ``"scripted"`` (`cartpole_controller`) or ``"random"`` (epsilon is then moot).
        progress: show a tqdm progress bar on stderr.
        max_steps: per-episode step cap, for environments without a time limit.

    Returns:
        ``n_episodes`` episodes in collection order.
    """
    _check_collect_args(env_id, n_episodes, epsilons, policy)
    env = make_env(env_id)
    episodes = []
    try:
        for i in tqdm(range(n_episodes), desc=f"collecting {env_id}", unit="ep", file=sys.stderr,
                      disable=not progress):
            rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
            env_seed, space_seed = (int(s) for s in rng.integers(2**31 - 1, size=2))
            env.action_space.seed(space_seed)
            eps = float(epsilons[i % len(epsilons)])

            def act(t: int, state: np.ndarray, info: dict[str, Any], reward: float) -> Any:
                if policy == "random" or rng.random() < eps:
                    return env.action_space.sample()
                return cartpole_controller(state)

            episodes.append(run_episode(env, act, seed=env_seed, max_steps=max_steps))
    finally:
        env.close()
    return episodes


def _check_collect_args(env_id: str, n_episodes: int, epsilons: Sequence[float], policy: str) -> None:
    if policy not in POLICIES:
        raise UserError(f"unknown behaviour policy {policy!r} (expected one of {', '.join(POLICIES)})")
    if policy == "scripted" and not str(env_id).startswith("CartPole-"):
        raise UserError(f"no scripted controller for environment {env_id!r}; use policy = \"random\"")
    if int(n_episodes) < 1:
        raise UserError(f"n_episodes must be at least 1, got {n_episodes}")
    if len(epsilons) == 0 or any(not 0.0 <= float(e) <= 1.0 for e in epsilons):
        raise UserError(f"epsilons must be a non-empty list of probabilities in [0, 1], got {list(epsilons)}")


def cached_collect(
    cache_dir: Path,
    env_id: str,
    n_episodes: int,
    epsilons: Sequence[float],
    seed: int,
    policy: str = "scripted",
    progress: bool = True,
    max_steps: int | None = None,
) -> list[Episode]:
    """`collect`, reusing a ``.npz`` under ``cache_dir`` keyed by a hash of the arguments.

    The key also covers `FORMAT_VERSION` and the gymnasium version (environment dynamics may
    change between releases). The file is written atomically, so an interrupted run never leaves
    a half-written cache entry.

    Args:
        cache_dir: directory for cache files (created if missing).
        env_id, n_episodes, epsilons, seed, policy, progress, max_steps: as for `collect`.

    Returns:
        The same episodes `collect` returns for these arguments.
    """
    _check_collect_args(env_id, n_episodes, epsilons, policy)
    key = json.dumps({
        "format": FORMAT_VERSION, "gymnasium": gymnasium.__version__, "env_id": env_id,
        "n_episodes": int(n_episodes), "epsilons": [float(e) for e in epsilons], "seed": int(seed),
        "policy": policy, "max_steps": max_steps,
    }, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', env_id)}-{digest}.npz"
    if path.exists():
        try:
            return load_episodes(path)
        except UserError:
            pass
    episodes = collect(env_id, n_episodes, epsilons, seed, policy, progress, max_steps)
    save_episodes(path, episodes)
    return episodes


def save_episodes(path: str | Path, episodes: Sequence[Episode]) -> Path:
    """Write episodes to ``path`` in the layout `load_episodes` reads, atomically.

    Args:
        path: destination ``.npz`` file; parent directories are created.
        episodes: at least one episode, all with the same state width and action kind.

    Returns:
        ``path``.
    """
    if not episodes:
        raise ValueError("save_episodes needs at least one episode")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(e) for e in episodes], dtype=np.int64)
    arrays = {
        "states": np.concatenate([e.states for e in episodes]),
        "actions": np.concatenate([e.actions for e in episodes]),
        "rewards": np.concatenate([e.rewards for e in episodes]),
        "episode_starts": np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_LAYOUT = ("states (N, S), actions (N,) int or (N, A) float, rewards (N,), "
           "and episode_starts (E,) or episode_lengths (E,)")


def load_episodes(path: str | Path) -> list[Episode]:
    """Read episodes from a ``.npz`` file.

    Layout: ``states`` (N, S) numbers, ``actions`` (N,) integers (discrete) or (N, A) floats
    (continuous), ``rewards`` (N,), and the episode boundaries as either ``episode_starts`` (E,)
    offsets (starting at 0, strictly increasing) or ``episode_lengths`` (E,) positive counts
    summing to N. Other arrays are ignored.

    Args:
        path: the ``.npz`` file.

    Returns:
        The E episodes, in file order.

    Raises:
        UserError: the file is missing or unreadable, or breaks the layout; the message names the
            file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such episode file (expected a .npz with {_LAYOUT})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path}: not a readable .npz episode file ({e})") from None
    except MemoryError:
        raise UserError(f"{path}: not a readable .npz episode file (an array's header claims more memory than "
                        "there is)") from None
    states, actions, rewards, starts = _validate(path, data)
    bounds = np.append(starts, len(states))
    return [Episode(states[a:b], actions[a:b], rewards[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _validate(path: Path, data: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    def fail(problem: str) -> UserError:
        return UserError(f"{path}: {problem}")

    for key in ("states", "actions", "rewards"):
        if key not in data:
            raise fail(f"missing array {key!r} (expected {_LAYOUT})")
    if ("episode_starts" in data) == ("episode_lengths" in data):
        raise fail("needs exactly one of 'episode_starts' and 'episode_lengths' "
                   f"(found {sorted(k for k in data if k.startswith('episode_')) or 'neither'})")
    states, actions, rewards = data["states"], data["actions"], data["rewards"]
    for key, arr in (("states", states), ("actions", actions), ("rewards", rewards)):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise fail(f"{key!r} has dtype {arr.dtype}, expected numbers")
    if states.ndim != 2:
        raise fail(f"'states' has shape {states.shape}, expected (N, S)")
    if rewards.ndim != 1:
        raise fail(f"'rewards' has shape {rewards.shape}, expected (N,)")
    if actions.ndim == 1 and not np.issubdtype(actions.dtype, np.integer):
        raise fail(f"'actions' has shape {actions.shape} and dtype {actions.dtype}: discrete actions "
                   "need integers (N,), continuous ones floats (N, A)")
    if actions.ndim not in (1, 2):
        raise fail(f"'actions' has shape {actions.shape}, expected (N,) or (N, A)")
    if actions.ndim == 2:
        actions = actions.astype(np.float32)
    n = len(states)
    for key, arr in (("actions", actions), ("rewards", rewards)):
        if len(arr) != n:
            raise fail(f"'states' has {n} rows but {key!r} has {len(arr)} (one row per step in each)")
    for key, arr in (("states", states), ("actions", actions), ("rewards", rewards)):
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise fail(f"{key!r} contains NaN or infinity")
    return states, actions, rewards, _episode_starts(fail, data, n)


def _episode_starts(fail: Callable[[str], UserError], data: dict[str, np.ndarray], n: int) -> np.ndarray:
    key = "episode_starts" if "episode_starts" in data else "episode_lengths"
    arr = data[key]
    if arr.ndim != 1 or len(arr) == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise fail(f"{key!r} has shape {arr.shape} and dtype {arr.dtype}, "
                   "expected a non-empty (E,) integer array")
    arr = arr.astype(np.int64)
    if key == "episode_lengths":
        if np.any(arr < 1) or arr.sum() != n:
            raise fail(f"'episode_lengths' must be positive and sum to the {n} steps (sum is {arr.sum()}, "
                       f"min is {arr.min()})")
        return np.concatenate([[0], np.cumsum(arr)[:-1]]).astype(np.int64)
    if arr[0] != 0:
        raise fail(f"'episode_starts' must begin at 0, begins at {arr[0]}")
    bad = np.flatnonzero(np.diff(arr) <= 0)
    if len(bad):
        i = int(bad[0])
        raise fail(f"'episode_starts' must be strictly increasing, "
                   f"but [{i}]={arr[i]} and [{i + 1}]={arr[i + 1]}")
    if arr[-1] >= n:
        raise fail(f"'episode_starts' ends at {arr[-1]}, beyond the last of the {n} steps")
    return arr


def return_stats(episodes: Sequence[Episode], high: float = 450.0) -> dict[str, float]:
    """Summary of episode returns: count, mean, std, min, quartiles, max and the share >= ``high``."""
    r = np.array([e.total_return for e in episodes], dtype=np.float64)
    q = np.percentile(r, [25, 50, 75])
    return {"episodes": float(len(r)), "steps": float(sum(len(e) for e in episodes)), "mean": r.mean(),
            "std": r.std(), "min": r.min(), "p25": q[0], "median": q[1], "p75": q[2], "max": r.max(),
            f"frac_ge_{high:g}": float(np.mean(r >= high))}


def return_histogram_png(episodes: Sequence[Episode], path: str | Path, bins: int = 50) -> Path:
    """Save a histogram of episode returns, with the mean marked, as a PNG.

    Args:
        episodes: the episodes.
        path: destination ``.png``; parent directories are created.
        bins: number of histogram bins.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    returns = np.array([e.total_return for e in episodes])
    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(returns, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(returns.mean(), color="tab:red", linestyle="--", label=f"mean {returns.mean():.1f}")
    ax.set(xlabel="episode return", ylabel="episodes", title=f"{len(returns)} episodes")
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
