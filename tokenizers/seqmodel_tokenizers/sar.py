"""State-action-reward tokenizer: an episode as return-to-go, state and action tokens per timestep.

An episode (`seqmodel_plugins.gym_data.Episode`, or any object with ``states`` (T, S),
``actions`` (T,) int or (T, A) float and ``rewards`` (T,)) becomes three *modalities*, one token
per timestep each (Chen et al. 2021, "Decision Transformer"):

    ``{m}_return``  continuous (T, 1): the return-to-go ``sum(rewards[t:])`` / `return_scale`
    ``{m}_state``   continuous (T, S): the state, standardised by the training split's mean/std
    ``{m}_action``  discrete ids (T,) or continuous (T, A), as the data has them

where ``m`` is the tokenizer's modality name. Every token's position is its timestep (a
"timestep" position table, steps past the table share its last row). Interleaving R, s, a per
timestep is the task's business (`decision` builds the batch directly).

How this meets the one-modality `Tokenizer` protocol: `spec()` and `encode()` are the *state*
modality, the one every use of these tokens has; `specs()` gives all three (capability
"modalities") and the members of capability "steps" (`encode_steps()`, the array transforms,
`choose_actions`; the `decision` task's `StepTokenizer`) work on all three, and the task declares
the return and action modalities it uses through its ``model_specs()``. So the core stays
modality-agnostic, and a behaviour-cloning task that drops the return tokens builds a model
without them. `decode` inverts each modality's segment (up to
float32 rounding of the state standardisation); `choose_actions` turns predicted action logits or
values back into environment actions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from seqmodel.errors import UserError
from seqmodel.plugin import ModalitySpec
from seqmodel.segments import Segment

ROLES = ("return", "state", "action")


@dataclass
class SARConfig:
    """`[tokenizer] kind = "sar"` (bind it to the source's episode field)."""

    return_scale: float = 0.0
    """Returns-to-go are divided by this (0: the largest episode return of the training split)."""
    normalize_states: bool = True
    """Standardise each state feature by the training split's mean and standard deviation."""
    max_timestep: int = 0
    """Rows of the timestep position tables (0: the longest training episode); later steps share the last."""
    num_actions: int = 0
    """Discrete actions: the number of action ids (0: the largest training action + 1)."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        return [(k, f"must not be negative, got {getattr(self, k)}")
                for k in ("return_scale", "max_timestep", "num_actions") if getattr(self, k) < 0]


def _arrays(value: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        states, actions, rewards = (np.asarray(getattr(value, k)) for k in ("states", "actions", "rewards"))
    except AttributeError:
        raise UserError(f"sar tokenizer: expected an episode (states, actions, rewards), got {type(value).__name__}") from None
    if states.ndim != 2 or rewards.ndim != 1 or actions.ndim not in (1, 2) or not len(states) == len(actions) == len(rewards):
        raise UserError(f"sar tokenizer: an episode needs states (T, S), actions (T,) or (T, A) and rewards (T,); "
                        f"got {states.shape}, {actions.shape}, {rewards.shape}")
    return states, actions, rewards


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """(T,) float32 ``sum(rewards[t:])``, accumulated in float64."""
    return np.cumsum(np.asarray(rewards, dtype=np.float64)[::-1])[::-1].astype(np.float32)


class SARTokenizer:
    """See the module docstring."""

    Config = SARConfig
    FILE = "sar.json"
    capabilities = ("modalities", "steps", "examples", "compare")

    def __init__(self, config: SARConfig, modality: str = "episode") -> None:
        self.config, self.modality = config, modality
        self.names = {role: f"{modality}_{role}" for role in ROLES}
        self.state: dict | None = None

    # -- fitting and persistence --------------------------------------------------------------
    def fit(self, values: Iterable[Any]) -> None:
        episodes = [_arrays(v) for v in values]
        if not episodes:
            raise UserError("sar tokenizer: the training split has no episodes")
        states = np.concatenate([s for s, _, _ in episodes]).astype(np.float64)
        actions = [a for _, a, _ in episodes]
        discrete = actions[0].ndim == 1
        if any((a.ndim == 1) != discrete or (not discrete and a.shape[1] != actions[0].shape[1]) for a in actions):
            raise UserError("sar tokenizer: the training episodes mix discrete and continuous (or differently sized) actions")
        if discrete:
            top = int(max(a.max(initial=0) for a in actions)) + 1
            if min(a.min(initial=0) for a in actions) < 0 or (self.config.num_actions and top > self.config.num_actions):
                raise UserError(f"sar tokenizer: training actions must be ids in [0, {self.config.num_actions or 'n'}), "
                                f"found {top - 1}")
        returns = [float(np.sum(r, dtype=np.float64)) for _, _, r in episodes]
        std = states.std(0) if self.config.normalize_states else np.ones(states.shape[1])
        self.state = {
            "state_dim": int(states.shape[1]),
            "state_mean": (states.mean(0) if self.config.normalize_states else np.zeros(states.shape[1])).tolist(),
            "state_std": np.where(std > 1e-6, std, 1.0).tolist(),
            "return_scale": float(self.config.return_scale or max(max(abs(r) for r in returns), 1e-6)),
            "max_timestep": int(self.config.max_timestep or max(len(r) for _, _, r in episodes)),
            "num_actions": int(self.config.num_actions or top) if discrete else 0,
            "action_dim": 0 if discrete else int(actions[0].shape[1]),
        }

    def save(self, directory: Path) -> None:
        (directory / self.FILE).write_text(json.dumps(self._fitted(), indent=1))

    def load(self, directory: Path) -> None:
        path = directory / self.FILE
        try:
            state = json.loads(path.read_text())
            assert len(state["state_mean"]) == len(state["state_std"]) == state["state_dim"] > 0
            assert state["return_scale"] > 0 and state["max_timestep"] > 0
            assert (state["num_actions"] > 0) != (state["action_dim"] > 0)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise UserError(f"{path}: missing or corrupt sar tokenizer state") from None
        self.state = state

    def _fitted(self) -> dict:
        if self.state is None:
            raise RuntimeError("sar tokenizer: call fit() or load() first")
        return self.state

    # -- specs -------------------------------------------------------------------------------
    @property
    def discrete_actions(self) -> bool:
        return self._fitted()["num_actions"] > 0

    def specs(self) -> dict[str, ModalitySpec]:
        """role ("return", "state", "action") -> the `ModalitySpec` of that modality."""
        st, limit = self._fitted(), (self._fitted()["max_timestep"],)
        action = ({"vocab_size": st["num_actions"]} if self.discrete_actions else {"width": st["action_dim"]})
        return {
            "return": ModalitySpec(self.names["return"], width=1, position="timestep", max_positions=limit),
            "state": ModalitySpec(self.names["state"], width=st["state_dim"], position="timestep", max_positions=limit),
            "action": ModalitySpec(self.names["action"], **action, position="timestep", max_positions=limit),
        }

    def spec(self) -> ModalitySpec:
        return self.specs()["state"]

    # -- array transforms (any leading shape) -----------------------------------------------
    def return_values(self, rtg: np.ndarray) -> torch.Tensor:
        """Returns-to-go (...,) -> token values (..., 1)."""
        return torch.from_numpy((np.asarray(rtg, dtype=np.float64) / self._fitted()["return_scale"]).astype(np.float32)[..., None])

    def state_values(self, states: np.ndarray) -> torch.Tensor:
        """States (..., S) -> standardised token values (..., S)."""
        st = self._fitted()
        states = np.asarray(states, dtype=np.float32)
        if states.shape[-1] != st["state_dim"]:
            raise UserError(f"sar tokenizer: states have {states.shape[-1]} features, this run's have {st['state_dim']}")
        mean, std = np.float32(st["state_mean"]), np.float32(st["state_std"])
        return torch.from_numpy(((states - mean) / std).astype(np.float32))

    def action_inputs(self, actions: np.ndarray) -> torch.Tensor:
        """Actions (...,) ids or (..., A) values -> token ids (int64) or values (float32)."""
        st = self._fitted()
        if self.discrete_actions:
            ids = np.asarray(actions)
            if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= st["num_actions"]):
                raise UserError(f"sar tokenizer: discrete actions must be integer ids in [0, {st['num_actions']})")
            return torch.from_numpy(ids.astype(np.int64))
        values = np.asarray(actions, dtype=np.float32)
        if values.ndim < 1 or values.shape[-1] != st["action_dim"]:
            raise UserError(f"sar tokenizer: actions must be (..., {st['action_dim']}) float vectors, got {values.shape}")
        return torch.from_numpy(values)

    def timesteps(self, t: np.ndarray) -> torch.Tensor:
        """Timesteps (...,) -> position ids (..., 1), clamped to the table."""
        return torch.from_numpy(np.minimum(np.asarray(t, dtype=np.int64), self._fitted()["max_timestep"] - 1)[..., None])

    # -- segments ----------------------------------------------------------------------------
    def encode_steps(self, value: Any, start: int = 0, stop: int | None = None) -> list[Segment]:
        """Timesteps [start, stop) of an episode as [return, state, action] segments.

        Returns-to-go are those of the whole episode (rewards after `stop` count).
        """
        states, actions, rewards = _arrays(value)
        stop = len(rewards) if stop is None else stop
        pos = self.timesteps(np.arange(start, stop))
        rtg = self.return_values(returns_to_go(rewards)[start:stop])
        act = self.action_inputs(actions[start:stop])
        key = "ids" if self.discrete_actions else "values"
        return [Segment(self.names["return"], values=rtg, positions=pos),
                Segment(self.names["state"], values=self.state_values(states[start:stop]), positions=pos),
                Segment(self.names["action"], **{key: act}, positions=pos)]

    def encode(self, value: Any, *, train: bool = False) -> Segment:
        """The state segment of an episode (see `encode_steps` for all three)."""
        return self.encode_steps(value)[1]

    def decode(self, segment: Segment) -> np.ndarray:
        """A segment of one of the three modalities back to returns-to-go (T,), states (T, S) or actions."""
        st = self._fitted()
        if segment.modality == self.names["return"]:
            return (segment.values[:, 0].double().numpy() * st["return_scale"]).astype(np.float32)
        if segment.modality == self.names["state"]:
            return segment.values.numpy() * np.float32(st["state_std"]) + np.float32(st["state_mean"])
        if segment.modality == self.names["action"]:
            return (segment.ids if segment.ids is not None else segment.values).numpy().copy()
        raise UserError(f"sar tokenizer: segment modality {segment.modality!r} is none of {', '.join(self.names.values())}")

    def examples(self) -> list[Any]:
        """Three small synthetic episodes (4-dim states, 2 discrete actions) for the conformance kit."""
        rng = np.random.default_rng(0)
        return [SimpleNamespace(states=rng.normal(size=(n, 4)).astype(np.float32),
                                actions=rng.integers(0, 2, size=n), rewards=np.ones(n, dtype=np.float32))
                for n in (5, 9, 3)]

    def same(self, value: Any, decoded: np.ndarray) -> bool:
        """`encode` keeps the states: they must come back to float32 rounding."""
        return bool(np.allclose(np.asarray(value.states, dtype=np.float32), decoded, atol=1e-5))

    def decode_steps(self, segments: list[Segment]) -> dict[str, np.ndarray]:
        """[return, state, action] segments -> {"returns_to_go", "states", "actions"}."""
        out = {self.decode_role(s.modality): self.decode(s) for s in segments}
        return {"returns_to_go": out["return"], "states": out["state"], "actions": out["action"]}

    def decode_role(self, modality: str) -> str:
        """The role ("return", "state", "action") of one of this tokenizer's modality names."""
        for role, name in self.names.items():
            if name == modality:
                return role
        raise UserError(f"sar tokenizer: {modality!r} is none of {', '.join(self.names.values())}")

    def choose_actions(self, output: torch.Tensor, greedy: bool = False,
                       generator: torch.Generator | None = None) -> np.ndarray:
        """Predicted actions (B, V) logits or (B, A) values -> environment actions.

        Discrete actions are sampled from the softmax (or the most likely one when `greedy`);
        continuous predictions are the actions themselves.
        """
        output = output.detach().float().cpu()
        if not self.discrete_actions:
            return output.numpy()
        if greedy:
            return output.argmax(-1).numpy()
        return torch.multinomial(torch.softmax(output, -1), 1, generator=generator)[:, 0].numpy()
