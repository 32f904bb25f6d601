"""Episodes of a gymnasium environment: collected with a noisy scripted policy, or read from a file.

Examples are ``{"episode": seqmodel_plugins.gym_data.Episode}``. By default the source plays
CartPole-v1 with `gym_data.cartpole_controller` and epsilon-random actions (cycled over several
epsilons, so the data mixes near-expert, mediocre and random play) and caches the result under the
user cache directory. With `path` it reads the user's own ``.npz`` episode file instead (layout:
`gym_data.load_episodes`). The split is by episode, a pure function of `split_seed`; "test" is the
validation split. `env_id` is also the environment the `decision` task plays in its evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import gymnasium
import numpy as np

from seqmodel.capabilities import check_split
from seqmodel.config import path_field
from seqmodel.errors import UserError, shown
from seqmodel_plugins import gym_data
from seqmodel_plugins.sources.text import cache_root


@dataclass
class GymEpisodesConfig:
    """`[data] source = "gym_episodes"`."""

    env_id: str = gym_data.DEFAULT_ENV_ID
    """The gymnasium environment the episodes come from (and that evaluation plays)."""
    path: str = path_field()
    """A .npz episode file to read instead of collecting (see seqmodel_plugins.gym_data.load_episodes)."""
    n_episodes: int = gym_data.DEFAULT_EPISODES
    """Episodes to collect (ignored with `path`)."""
    epsilons: list[float] = field(default_factory=lambda: list(gym_data.DEFAULT_EPSILONS))
    """Probabilities of a random action, cycled over the collected episodes."""
    seed: int = 0
    """Base seed of the collection (environment resets and behaviour noise)."""
    policy: str = "scripted"
    """Behaviour policy: "scripted" (CartPole controller + epsilon noise) or "random"."""
    max_steps: int = 0
    """Per-episode step cap while collecting (0: the environment's own time limit)."""
    cache_dir: str = path_field()
    """Where collected episodes are cached (default: $SEQMODEL_CACHE or the user cache directory)."""
    val_fraction: float = 0.1
    """Fraction of the episodes held out for validation (and test)."""
    split_seed: int = 0
    """Seed of the episode-level train/validation split."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = []
        if self.n_episodes < 2 and not self.path:
            bad.append(("n_episodes", f"must be at least 2 (train and validation), got {self.n_episodes}"))
        if not self.epsilons or any(not 0.0 <= e <= 1.0 for e in self.epsilons):
            bad.append(("epsilons", f"expected a non-empty list of probabilities in [0, 1], got {self.epsilons}"))
        if self.policy not in gym_data.POLICIES:
            bad.append(("policy", f"expected one of {', '.join(gym_data.POLICIES)}, got {self.policy!r}"))
        if self.max_steps < 0:
            bad.append(("max_steps", f"must not be negative, got {self.max_steps}"))
        if not 0 < self.val_fraction < 1:
            bad.append(("val_fraction", f"must be in (0, 1), got {self.val_fraction}"))
        return bad


def split_episodes(n: int, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Episode indices of each split: a seeded permutation, the first `val_fraction` held out.

    Args:
        n: number of episodes (at least 2).
        val_fraction: share of episodes for validation; at least one each way.
        seed: permutation seed.
    """
    if n < 2:
        raise UserError(f"need at least 2 episodes to split into train and validation, got {n}")
    order = np.random.default_rng(np.random.SeedSequence([seed, n])).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    val = np.sort(order[:n_val])
    return {"train": np.sort(order[n_val:]), "val": val, "test": val}


class GymEpisodesSource:
    """See the module docstring."""

    Config = GymEpisodesConfig
    fields = ("episode",)
    capabilities = ("info",)

    def info(self) -> dict:
        """The environment the episodes come from (where the decision task plays)."""
        return {"env_id": self.env_id}

    def __init__(self, config: GymEpisodesConfig) -> None:
        self.config = config

    @property
    def env_id(self) -> str:
        """The environment the episodes come from."""
        return self.config.env_id

    @cached_property
    def episodes(self) -> list[gym_data.Episode]:
        """Every episode, collected (or read from the cache or `path`) once."""
        c = self.config
        if c.path:
            path = Path(c.path).expanduser()
            if path.is_dir():
                raise UserError(f"path: {shown(c.path)} is a folder; expected a .npz episode file")
            if path.is_file() and path.stat().st_size == 0:
                raise UserError(f"path: {shown(c.path)} is an empty file; expected a .npz episode file")
            episodes = gym_data.load_episodes(path)
            problem = gym_data.episodes_env_problem(episodes, c.env_id)
            if problem:
                raise UserError(f"path: {path}: {problem}")
            return episodes
        gym_data.make_env(c.env_id).close()  # an unknown id is named as such, before the policy is checked
        return gym_data.cached_collect(cache_root(c.cache_dir) / "episodes", c.env_id, c.n_episodes, c.epsilons,
                                       c.seed, c.policy, progress=True, max_steps=c.max_steps or None)

    @cached_property
    def _splits(self) -> dict[str, np.ndarray]:
        return split_episodes(len(self.episodes), self.config.val_fraction, self.config.split_seed)

    def split(self, name: str) -> list[dict]:
        check_split(name)
        return [{"episode": self.episodes[i]} for i in self._splits[name]]

    def identity(self) -> dict:
        c = self.config
        split = {"val_fraction": c.val_fraction, "split_seed": c.split_seed}
        if c.path:
            _ = self.episodes  # a missing or malformed file is a UserError before it is hashed
            digest = hashlib.sha256(Path(c.path).expanduser().read_bytes()).hexdigest()
            return {"source": "gym_episodes", "path": c.path, "sha256": digest, **split}
        return {"source": "gym_episodes", "env_id": c.env_id, "n_episodes": c.n_episodes, "epsilons": c.epsilons,
                "seed": c.seed, "policy": c.policy, "max_steps": c.max_steps, "format": gym_data.FORMAT_VERSION,
                "gymnasium": gymnasium.__version__, **split}
