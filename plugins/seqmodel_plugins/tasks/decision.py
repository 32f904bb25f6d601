"""Return-conditioned action prediction (Decision Transformer) and its behaviour-cloning twin.

Each training example is a window of K timesteps of one episode, interleaved as
``R_1 s_1 a_1 R_2 s_2 a_2 ...`` (return-to-go, state, action tokens of the `sar` tokenizer; with
``condition = false`` the return tokens are dropped: behaviour cloning with the same network).
A causal decoder reads the window and the hidden state of every state token predicts the action
taken there: cross-entropy for discrete actions, mean squared error for continuous ones.

Windows end at a timestep drawn uniformly from the split (so long episodes weigh more) and reach
back at most K steps, never past the episode's start: exactly the windows the policy sees when
it acts. The batch's token set is built directly (slots 3t, 3t+1, 3t+2 of window step t) rather
than by `collate` over 3K one-token segments, which gives the same set much faster (see tests).

`evaluate` plays the environment: each episode starts from a target return, the return-to-go is
the target minus the rewards collected so far, and every step the model re-reads the last K
timesteps (no KV cache: recomputing a 60-token window costs milliseconds) and samples its action
(or takes the most likely one with ``greedy``). `report` draws the achieved return against the
target return, the Decision Transformer's signature curve, and the data set's return histogram.

References: Chen et al., "Decision Transformer: Reinforcement Learning via Sequence Modeling",
2021 (github.com/kzl/decision-transformer).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor, nn

from seqmodel.errors import UserError
from seqmodel.masks import TokenView, require_no_future
from seqmodel.plots import figure
from seqmodel.plugin import ModalitySpec, declared
from seqmodel.progress import progress
from seqmodel.segments import ModalityInputs, Segment, TokenSet
from seqmodel.task import SPLITS, RandomBatches, TaskContext, chunks, per_split, random_generator
from seqmodel_plugins import gym_data


@dataclass
class DecisionConfig:
    """`[task] kind = "decision"`."""

    modality: str = ""
    """The `sar` tokenizer's modality (default: the recipe's only tokenizer)."""
    condition: bool = True
    """Condition on return-to-go tokens (Decision Transformer); false drops them (behaviour cloning)."""
    context_steps: int = 20
    """Timesteps per window (K); the window has 3K tokens (2K without returns), at most [model] context."""
    target_return: float = 500.0
    """Return the policy is conditioned on in `seqmodel eval` (`--set target_return=R` overrides it)."""
    episodes: int = 20
    """Episodes played per evaluation (`--set episodes=N` overrides it)."""
    greedy: bool = False
    """Take the most likely discrete action instead of sampling one (`--set greedy=true` sets it)."""
    env_id: str = ""
    """The environment evaluation plays (default: the source's env_id)."""
    eval_seed: int = 100_000
    """Evaluation episode i resets the environment with seed eval_seed + i."""
    max_episode_steps: int = 0
    """Stop evaluation episodes after this many steps (0: the environment's own limit, at most 100,000)."""
    eval_windows: int = 2048
    """Windows of the split scored for the action loss in `evaluate`."""
    eval_batch_size: int = 256
    """Windows per forward pass when scoring."""
    report_targets: list[float] = field(default_factory=lambda: [50.0, 100.0, 200.0, 300.0, 400.0, 500.0])
    """Target returns of the end-of-run achieved-vs-target plot (empty: no plot)."""
    report_episodes: int = 10
    """Episodes per target return in that plot."""
    metric_episodes: int = 5
    """Episodes played at `target_return` at every evaluation during training (mean_return in metrics.jsonl)."""

    def validate(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when valid."""
        bad = [(k, f"must be at least 1, got {getattr(self, k)}")
               for k in ("context_steps", "episodes", "eval_windows", "eval_batch_size", "report_episodes", "metric_episodes")
               if getattr(self, k) < 1]
        if self.max_episode_steps < 0:
            bad.append(("max_episode_steps", f"must not be negative, got {self.max_episode_steps}"))
        return bad


@dataclass
class DecisionEvalOptions:
    """`seqmodel eval RUN --set KEY=VALUE` options of the decision task (unset: the `[task]` values)."""

    episodes: int = 0
    """Episodes to play (0: `[task] episodes`)."""
    target_return: float | None = None
    """The return to condition on (default: `[task] target_return`)."""
    greedy: bool | None = None
    """Take the most likely action instead of sampling one (default: `[task] greedy`)."""

    def validate(self) -> list[tuple[str, str]]:
        return [] if self.episodes >= 0 else [("episodes", f"must be at least 1 (or 0 for [task] episodes), got {self.episodes}")]


@dataclass
class StepTable:
    """Every timestep of a split, already tokenized, with the index of its episode's first step."""

    returns: Tensor  # (N, 1)
    states: Tensor  # (N, S)
    actions: Tensor  # (N,) int64 or (N, A)
    time: Tensor  # (N, 1) position ids
    first: Tensor  # (N,) int64

    @classmethod
    def build(cls, tok, episodes: list) -> StepTable:
        if not episodes:
            raise UserError("[data] the split has no episodes")
        segs = [tok.encode_steps(ep) for ep in episodes]
        lengths = torch.tensor([len(s[0]) for s in segs])
        starts = torch.cumsum(lengths, 0) - lengths
        return cls(torch.cat([s[0].values for s in segs]), torch.cat([s[1].values for s in segs]),
                   torch.cat([s[2].ids if s[2].ids is not None else s[2].values for s in segs]),
                   torch.cat([s[0].positions for s in segs]), torch.repeat_interleave(starts, lengths))

    def __len__(self) -> int:
        return len(self.first)

    def windows(self, ends: Tensor, K: int) -> tuple[Tensor, Tensor]:
        """Step indices (B, K) of the windows ending at `ends` (B,), and which are real (B, K)."""
        start = torch.maximum(self.first[ends], ends - K + 1)
        idx = start[:, None] + torch.arange(K)
        valid = idx <= ends[:, None]
        return torch.minimum(idx, ends[:, None]), valid


def interleave(parts: list[tuple[str, dict]], time: Tensor, valid: Tensor) -> TokenSet:
    """A batch of windows as one token set, modality j of window step t at slot ``n * t + j``.

    Args:
        parts: (modality name, ModalityInputs data fields such as ids/values/targets) per
            modality, in their per-timestep order; tensors are (B, K, ...).
        time: (B, K, 1) timestep position ids, shared by the modalities.
        valid: (B, K) which window steps are real (windows are right-padded).
    """
    n, K = len(parts), valid.shape[1]
    inputs = {}
    for j, (name, data) in enumerate(parts):
        slot = torch.where(valid, torch.arange(K) * n + j, 0)
        inputs[name] = ModalityInputs(slot=slot, valid=valid, positions=time, **data)
    set_valid = valid.repeat_interleave(n, dim=1)  # (B, n K)
    modality = torch.where(set_valid, torch.arange(n).repeat(K), -1)
    zeros = torch.zeros_like(modality)
    return TokenSet(inputs, tuple(name for name, _ in parts), set_valid, modality, zeros, zeros,
                    time[..., 0].repeat_interleave(n, dim=1))


class StepTokenizer(Protocol):
    """What the decision task needs of its tokenizer besides the base contract: the capability
    "steps", as the `sar` tokenizer has it (see seqmodel_tokenizers/sar.py for each member)."""

    names: dict[str, str]  # role ("return", "state", "action") -> modality name
    discrete_actions: bool

    def specs(self) -> dict[str, ModalitySpec]: ...

    def encode_steps(self, value: Any, start: int = 0, stop: int | None = None) -> list[Segment]: ...

    def return_values(self, rtg: np.ndarray) -> Tensor: ...

    def state_values(self, states: np.ndarray) -> Tensor: ...

    def action_inputs(self, actions: np.ndarray) -> Tensor: ...

    def timesteps(self, t: np.ndarray) -> Tensor: ...

    def choose_actions(self, output: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> np.ndarray: ...


def check_causal(model_cfg, roles: tuple[str, ...]) -> None:
    """Refuse a model whose masks let a state token see its own action or later tokens."""
    if model_cfg.arch != "decoder":
        raise UserError(f"[model] arch: the decision task needs a decoder, got {model_cfg.arch!r}")
    n, L = len(roles), 6 * len(roles)
    index, zeros = torch.arange(L), torch.zeros(L, dtype=torch.long)
    view = TokenView(index, zeros, zeros, index // n, index % n, {r: i for i, r in enumerate(roles)})
    require_no_future(model_cfg, view, index % n == roles.index("state"), "the decision task")


class DecisionTask:
    """See the module docstring."""

    Config = DecisionConfig
    EvalOptions = DecisionEvalOptions
    capabilities = ("report", "modalities", "eval_options", "metrics")
    metric_names = ("mean_return",)  # what metrics() reports (`[train] keep_best` is checked against them)

    def __init__(self, config: DecisionConfig) -> None:
        self.config = config

    # -- setup -------------------------------------------------------------------------------
    def setup(self, ctx: TaskContext) -> None:
        try:
            self._setup(ctx)
        except UserError as err:
            raise UserError(f"{ctx.where}: {err}") from None

    def _setup(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        mods = list(ctx.tokenizers)
        self.modality = self.config.modality or mods[0]
        if self.modality not in ctx.tokenizers:
            raise UserError(f"[task] modality: no tokenizer for {self.modality!r} (have: {', '.join(mods)})")
        self.tok: StepTokenizer = ctx.tokenizers[self.modality]
        if "steps" not in declared(self.tok):
            raise UserError(f"[task] modality: the decision task needs a tokenizer with the \"steps\" capability "
                            f"(return, state and action tokens, as `sar` has); {self.modality!r} is "
                            f"{ctx.plugins.get(self.modality, 'another tokenizer')}")
        self.roles = ("return", "state", "action") if self.config.condition else ("state", "action")
        self.K = self.config.context_steps
        check_causal(ctx.model, self.roles)
        if len(self.roles) * self.K > ctx.model.context:
            raise UserError(f"[task] context_steps: {self.K} steps are {len(self.roles) * self.K} tokens, more than "
                            f"[model] context = {ctx.model.context}")
        self.env_id = self.config.env_id or ctx.source_info.get("env_id", "")
        if not self.env_id:
            raise UserError("[task] env_id: the source names no environment; give the one to evaluate in")
        env = gym_data.make_env(self.env_id)
        try:
            self._check_env(env)
        finally:
            env.close()

    def model_specs(self, specs: dict[str, ModalitySpec]) -> list[ModalitySpec]:
        """The tokenizers' modalities (the state one is the sar tokenizer's spec()), then the action
        (and, when conditioning, return) modalities."""
        mine = self.tok.specs()
        return [*specs.values()] + [mine[r] for r in self.roles if r != "state"]

    def outputs(self) -> tuple[str, ...]:
        return ()

    def build_head(self, d_model: int) -> nn.Module:
        """The action predictor: a linear map from a state token's hidden vector to logits or values."""
        st = self.tok.specs()["action"]
        return nn.Linear(d_model, st.vocab_size if st.discrete else st.width)

    # -- data --------------------------------------------------------------------------------
    @per_split
    def table(self, split: str) -> StepTable:
        return StepTable.build(self.tok, list(self.ctx.values(self.modality, split)))

    def window_set(self, returns: Tensor, states: Tensor, actions: Tensor, time: Tensor, valid: Tensor,
                   targets: bool = True) -> TokenSet:
        """Tokenized (B, K, ...) windows as an interleaved token set; the state tokens carry the
        actions as their targets."""
        key = "ids" if self.tok.discrete_actions else "values"
        data = {"return": {"values": returns}, "action": {key: actions},
                "state": {"values": states} | ({"targets": actions, "loss_mask": valid} if targets else {})}
        return interleave([(self.tok.names[r], data[r]) for r in self.roles], time, valid)

    def build_batch(self, table: StepTable, ends: Tensor) -> TokenSet:
        idx, valid = table.windows(ends, self.K)
        return self.window_set(table.returns[idx], table.states[idx], table.actions[idx], table.time[idx], valid)

    def batches(self, split: str, train: bool) -> RandomBatches:
        table = self.table(split)
        return RandomBatches(len(table), partial(self.build_batch, table), self.ctx.split_seed(split))

    def predict_actions(self, core, head, batch: TokenSet) -> Tensor:
        """Head output at every state token: (B, K, V) logits or (B, K, A) values."""
        hidden = core(batch)
        slot = batch.inputs[self.tok.names["state"]].slot
        return head(hidden[torch.arange(hidden.shape[0], device=hidden.device)[:, None], slot])

    def loss(self, core, head, batch: TokenSet):
        out = self.predict_actions(core, head, batch).float()
        st = batch.inputs[self.tok.names["state"]]
        picked, wanted = out[st.loss_mask], st.targets[st.loss_mask]
        if self.tok.discrete_actions:
            losses = F.cross_entropy(picked, wanted, reduction="none")
        else:
            losses = F.mse_loss(picked, wanted.float(), reduction="none").mean(-1)
        loss = losses.sum() / max(len(losses), 1)  # 0, not NaN, for a batch without a state to predict
        return loss, {"tokens": int(batch.valid.sum()), "targets": len(losses)}

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def action_loss(self, model, split: str, limit: int | None = None) -> float:
        """Mean action loss over `eval_windows` fixed windows of a split (`limit` caps the batches)."""
        table = self.table(split)
        ends = torch.randperm(len(table), generator=random_generator(self.config.eval_seed, SPLITS.index(split)))
        total, count = 0.0, 0
        for chunk in chunks(ends[: self.config.eval_windows], self.config.eval_batch_size, limit, f"action loss {split}"):
            loss, _ = self.loss(model.core, model.head, self.build_batch(table, chunk).to(model.device))
            total, count = total + float(loss) * len(chunk), count + len(chunk)
        return total / count

    def evaluate(self, model, split: str, limit: int | None, options: DecisionEvalOptions) -> dict:
        """Play `episodes` episodes conditioned on `target_return`; returns and the split's action loss."""
        c = self.config
        episodes = options.episodes or c.episodes
        target = c.target_return if options.target_return is None else options.target_return
        greedy = c.greedy if options.greedy is None else options.greedy
        t0 = time.perf_counter()
        returns, lengths = self.rollout(model, target, episodes, greedy)
        seconds = time.perf_counter() - t0
        return {"mean_return": float(np.mean(returns)), "min_return": float(np.min(returns)),
                "max_return": float(np.max(returns)), "std_return": float(np.std(returns)),
                "mean_length": float(np.mean(lengths)), "episodes": episodes, "target_return": float(target),
                "greedy": bool(greedy), "env_steps_per_s": round(float(np.sum(lengths)) / seconds, 1),
                "action_loss": self.action_loss(model, split, limit)}

    @property
    def loss_label(self) -> str:
        return "cross-entropy (nats/action)" if self.tok.discrete_actions else "mean squared error (per action)"

    def metrics(self, model, split: str) -> dict[str, float]:
        """Mean return of `metric_episodes` episodes at the `[task] target_return`."""
        returns, _ = self.rollout(model, self.config.target_return, self.config.metric_episodes, self.config.greedy)
        return {"mean_return": float(np.mean(returns))}

    def _check_env(self, env) -> None:
        """Refuse an environment whose observations or actions are not this run's (evaluation plays it)."""
        spec, discrete = self.tok.specs()["action"], self.tok.discrete_actions
        problem = gym_data.env_problem(env, self.tok.spec().width, discrete, spec.width or 0,
                                       (0, spec.vocab_size - 1) if discrete else None, "this run's")
        if problem:
            raise UserError(f"{'[task]' if self.config.env_id else '[data]'} env_id {self.env_id!r} (where evaluation "
                            f"plays): {problem}")

    def _envs(self, n: int) -> list:
        envs = [gym_data.make_env(self.env_id) for _ in range(n)]
        self._check_env(envs[0])
        return envs

    @torch.no_grad()
    def rollout(self, model, target: float, n: int, greedy: bool = False,
                seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Play n episodes (reset seeds seed + i) at once, conditioned on `target`; (returns, lengths)."""
        seed = self.config.eval_seed if seed is None else seed
        envs, K, tok = self._envs(n), self.K, self.tok
        g = torch.Generator().manual_seed(seed)
        state = np.stack([spaces.flatten(e.observation_space, e.reset(seed=seed + i)[0]) for i, e in enumerate(envs)])
        win = Window(n, K, state.shape[1], tok.specs()["action"])
        rtg, total = np.full(n, float(target)), np.zeros(n)
        length, alive = np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)
        cap = self.config.max_episode_steps or 100_000
        for t in progress(range(cap), f"playing {n} episodes", unit="steps"):
            win.push(t, rtg, state)
            live = np.flatnonzero(alive)
            ts = self.window_set(*win.tokens(tok, live), targets=False).to(model.device)
            out = self.predict_actions(model.core, model.head, ts)[:, -1]
            actions = tok.choose_actions(out, greedy, g)
            win.set_actions(live, actions)
            for i, a in zip(live, actions):
                obs, r, term, trunc, _ = envs[i].step(self._env_action(envs[i], a))
                state[i] = spaces.flatten(envs[i].observation_space, obs)
                total[i], rtg[i], length[i] = total[i] + r, rtg[i] - r, length[i] + 1
                alive[i] = not (term or trunc)
            if not alive.any():
                break
        for e in envs:
            e.close()
        return total, length

    def _env_action(self, env, action):
        if self.tok.discrete_actions:
            return int(action)
        space = env.action_space
        return np.clip(np.asarray(action, dtype=np.float32).reshape(space.shape), space.low, space.high)

    # -- end-of-run pictures --------------------------------------------------------------------
    def report(self, model, run_dir: Path) -> list[Path]:
        """returns_vs_target.png/.json (achieved return per target) and dataset_returns.png."""
        c, paths = self.config, []
        episodes = list(self.ctx.values(self.modality, "train"))
        if episodes and isinstance(episodes[0], gym_data.Episode):
            paths.append(gym_data.return_histogram_png(episodes, Path(run_dir) / "dataset_returns.png"))
        if not c.report_targets:
            return paths
        rows = []
        for target in progress(c.report_targets, "returns by target", total=len(c.report_targets), unit="targets"):
            returns, _ = self.rollout(model, target, c.report_episodes, c.greedy)
            rows.append({"target": target, "mean": float(np.mean(returns)), "std": float(np.std(returns)),
                         "returns": returns.tolist()})
        (Path(run_dir) / "returns_vs_target.json").write_text(json.dumps(rows, indent=1))
        paths.append(returns_plot(rows, Path(run_dir) / "returns_vs_target.png",
                                  f"{self.ctx.where} ({'return-conditioned' if c.condition else 'behaviour cloning'})"))
        print("seqmodel: achieved return by target: " + ", ".join(f"{r['target']:g} -> {r['mean']:.1f}" for r in rows),
              file=sys.stderr)
        return paths


class Window:
    """The last K timesteps of n episodes played in lock-step (raw returns, states, actions)."""

    def __init__(self, n: int, K: int, state_dim: int, action_spec) -> None:
        self.K, self.k = K, 0
        self.rtg, self.time = np.zeros((n, K)), np.zeros((n, K), dtype=np.int64)
        self.states = np.zeros((n, K, state_dim), dtype=np.float32)
        self.actions = (np.zeros((n, K), dtype=np.int64) if action_spec.discrete
                        else np.zeros((n, K, action_spec.width), dtype=np.float32))

    def push(self, t: int, rtg: np.ndarray, state: np.ndarray) -> None:
        """Append timestep t (dropping the oldest when full); its action comes with `set_actions`."""
        if self.k == self.K:
            for a in (self.rtg, self.time, self.states, self.actions):
                a[:, :-1] = a[:, 1:].copy()
        else:
            self.k += 1
        self.rtg[:, self.k - 1], self.time[:, self.k - 1], self.states[:, self.k - 1] = rtg, t, state
        self.actions[:, self.k - 1] = 0

    def set_actions(self, rows: np.ndarray, actions: np.ndarray) -> None:
        self.actions[rows, self.k - 1] = actions

    def tokens(self, tok, rows: np.ndarray) -> tuple[Tensor, ...]:
        """(returns, states, actions, time, valid) tokens of the given episodes' windows."""
        k = self.k
        valid = torch.ones(len(rows), k, dtype=torch.bool)
        return (tok.return_values(self.rtg[rows, :k]), tok.state_values(self.states[rows, :k]),
                tok.action_inputs(self.actions[rows, :k]), tok.timesteps(self.time[rows, :k]), valid)


def returns_plot(rows: list[dict], path: Path, title: str) -> Path:
    """Achieved return (mean and spread over episodes) against target return, with y = x."""
    targets = np.array([r["target"] for r in rows])
    means, stds = np.array([r["mean"] for r in rows]), np.array([r["std"] for r in rows])
    with figure(path, size=(6, 4.5), dpi=100) as (fig, ax):
        ax.plot(targets, targets, "--", color="grey", label="achieved = target")
        ax.errorbar(targets, means, yerr=stds, fmt="o-", capsize=3, label="achieved (mean ± std)")
        ax.set(xlabel="target return", ylabel="achieved return")
        ax.set_title(title, fontsize=9, wrap=True)
        ax.grid(alpha=0.3)
        ax.legend()
    return path
