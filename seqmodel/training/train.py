"""The one training loop, on HuggingFace accelerate (CPU, one GPU, many GPUs or machines).

Every step is a pure function of (seed, step): batches are drawn by step index and dropout is
reseeded per step, so a run resumed from a checkpoint continues exactly as if never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from tqdm.auto import tqdm

from seqmodel.data.pipeline import Pipeline
from seqmodel.errors import UserError
from seqmodel.files import write_atomic
from seqmodel.model import lora
from seqmodel.recipe.schema import TrainConfig
from seqmodel.task import Slice, random_generator
from seqmodel.training import budget, checkpoint, peers, warm_start
from seqmodel.training.cpu_memory import keep_freed_memory
from seqmodel.training.report import failure_words
from seqmodel.training.tracking import Tracker, check_keep_best

FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # FQN-keyed, gathered (FSDP) or plain
RESUMED_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True, strict=False)
"""Loading: a parameter that never had a gradient (of a mixture member not drawn yet) has no AdamW
moments in the checkpoint, as in the run that wrote it (`checkpoint.load_optimizer` checks the
rest); torch would give it moments at step 1, so `Trainer.setup` removes them."""


def fingerprint(batch) -> str:
    """sha1 of a batch's tensors: the same data gives the same string on any run."""
    digest = hashlib.sha1()

    def feed(obj) -> None:
        if isinstance(obj, torch.Tensor):
            digest.update(obj.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                digest.update(str(k).encode())
                feed(obj[k])
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                feed(x)
        elif hasattr(obj, "__dict__"):
            feed(vars(obj))

    feed(batch)
    return digest.hexdigest()[:16]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - cfg.min_lr)


def seed_step(seed: int, device: torch.device) -> None:
    """Seed the generators a step draws from: the CPU's and, on an accelerator, its own.

    Not `torch.manual_seed`: that also queues a lazy seed for every backend torch was built with
    and formats a stack trace for each, about 0.3 ms per step on a CPU machine with a CUDA build.
    """
    torch.default_generator.manual_seed(seed)
    if device.type != "cpu":
        torch.get_device_module(device).manual_seed(seed)


def make_optimizer(module: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in module.parameters() if p.requires_grad]
    seen, decay, no_decay = set(), [], []
    for p in params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cuda", "cpu"))


BF16_INSTRUCTIONS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")  # x86 and ARM names in torch.cpu.get_capabilities()


def cpu_has_bf16() -> bool:
    return any(torch.cpu.get_capabilities().get(name) for name in BF16_INSTRUCTIONS)


def emulated_bf16_warning(precision: str, cpu: bool) -> str | None:
    """A warning when bf16 autocast would run on a CPU without bf16 instructions, where torch
    emulates it: at the baby GPT shape 3x slower than fp32 on an AVX-512 Xeon, 17x on an AVX2 EPYC."""
    if precision != "bf16" or not cpu or cpu_has_bf16():
        return None
    return ('seqmodel: warning: [train] precision = "bf16" on a CPU without bf16 instructions '
            "(AVX512-BF16, AMX or ARM BF16) is emulated and several times slower than fp32")


def resolved_precision(precision: str, cpu: bool) -> str:
    """`[train] precision`, with "auto" made bf16 where the hardware computes in it natively (a
    CUDA GPU with bf16, a CPU with bf16 instructions) and fp32 elsewhere."""
    if precision != "auto":
        return precision
    native = cpu_has_bf16() if cpu else torch.cuda.is_bf16_supported()
    return "bf16" if native else "fp32"


def make_accelerator(cfg: TrainConfig, run_dir: Path, sparse: bool = False) -> Accelerator:
    """Accelerator for the recipe: device, precision, accumulation, DDP/FSDP, trackers. `sparse`:
    a step may leave some parameters unused (a mixture member's batch uses only its modalities
    and head), which DDP must be told."""
    cpu = budget.check_machine(cfg)
    handlers = [peers.init_kwargs(cfg)]
    if sparse and cfg.distributed != "fsdp":
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    kwargs = {}
    if cfg.distributed == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True)
    trackers = [cfg.log_with] if isinstance(cfg.log_with, str) else list(cfg.log_with)
    trackers = [t for t in trackers if t]
    precision = resolved_precision(cfg.precision, cpu)
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    AcceleratorState._reset_state()  # another run earlier in this process (Python API, tests) may differ in precision
    try:
        acc = Accelerator(cpu=cpu, mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum,
                          log_with=trackers or None, project_dir=str(run_dir), kwargs_handlers=handlers,
                          **kwargs)
        if trackers:
            acc.init_trackers(run_dir.name, config={k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))})
    except (ValueError, ImportError, ModuleNotFoundError) as err:
        raise UserError(f"[train] log_with: {err}") from None
    started = {getattr(t, "name", "") for t in acc.trackers}
    missing = [t for t in trackers if t not in started]
    if missing and acc.is_main_process:  # accelerate only warns, and the run would go untracked
        raise UserError(f"[train] log_with: tracker {missing[0]!r} is not available (is its package installed? "
                        f"e.g. pip install {missing[0]}); remove it from log_with to train without it")
    warning = emulated_bf16_warning(precision, cpu)
    if warning and acc.is_main_process:
        print(warning, file=sys.stderr)
    if cfg.precision == "auto" and acc.is_main_process:
        print(f"seqmodel: [train] precision auto: {precision} on this {'CPU' if cpu else 'GPU'}", file=sys.stderr)
    return acc


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM after `step` (None: before or outside a step);
    `checkpoint` is the newest complete checkpoint of `run_dir` (None: there is none)."""

    def __init__(self, step: int | None, checkpoint: Path | None, run_dir: Path | None = None) -> None:
        super().__init__(step)
        self.step, self.checkpoint, self.run_dir = step, checkpoint, run_dir


def last_good(run_dir: Path) -> str:
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        return "no checkpoint was written before it"
    return (f"the last good checkpoint is step {checkpoint.step_of(ckpt)} (continue from it with --resume "
            "and a lower --set train.lr=...)")


class Interrupt:
    """Turns SIGINT/SIGTERM into a flag checked between steps and evaluation batches (then a
    checkpoint, then exit); a second one stops at once. SIGHUP (a closed terminal, or the death of
    the agent that launched this worker: `seqmodel.cli.launch.die_with_parent`, which the kernel
    may repeat once per thread of the dying agent) only ever asks for the stop with a checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGTERM: what torch.distributed.run sends workers

    def __init__(self) -> None:
        self.hit = False
        self.previous = {s: signal.getsignal(s) for s in self.SIGNALS}

    def __enter__(self):
        def handler(signum, frame):
            if self.hit and signum != signal.SIGHUP:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self.hit = True

        for s in self.SIGNALS:
            signal.signal(s, handler)
        return self

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


@dataclass
class Trainer:
    pipeline: Pipeline
    run_dir: Path
    resume: bool = False
    progress: bool = True
    history: list[dict] = field(default_factory=list)
    window: list[float] = field(default_factory=list)  # train losses since the last log line
    fingerprints: object = None  # open batches.log when [train] fingerprint_batches
    pending: dict | None = None  # a log record whose evaluation a signal cut short (done on resume)
    done: int | None = None  # the last step completed in this process
    logged: bool = False  # whether this process has written metrics.jsonl yet
    tracker: Tracker | None = None  # task metrics, best checkpoint, loss curve, plain log lines

    def log(self, record: dict) -> None:
        """Append a record to metrics.jsonl; the first one of a process first rewrites the file with
        the history it started from (so a run that fails before logging leaves the file alone)."""
        self.history.append(record)
        if self.acc.trackers:
            self.acc.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if not self.acc.is_main_process:
            return
        path = self.run_dir / "metrics.jsonl"
        try:
            if not self.logged:
                write_atomic(path, "".join(json.dumps(r) + "\n" for r in self.history))
                self.logged = True
            else:
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
        except OSError as err:
            raise UserError(f"{path}: cannot write: {err.strerror or err}") from None

    @torch.no_grad()
    def val_loss(self, model, stream, interrupt: Interrupt) -> float | None:
        """Mean validation loss, or None when a signal cut the evaluation short (on any process)."""
        cfg, rank, device = self.cfg, self.acc.process_index, self.acc.device
        model.eval()
        total = torch.zeros(3, device=device)  # loss sum, batches, interrupted
        for k in range(cfg.eval_batches):
            if interrupt.hit:
                total[2] = 1
                break
            batch = stream.batch(Slice(k, 0, rank, self.per_rank, cfg.batch_size)).to(device)
            with self.acc.autocast():
                loss, _ = model(batch)
            total[:2] += torch.stack([loss.float().detach(), torch.ones((), device=device)])
        model.train()
        total = self.acc.reduce(total, reduction="sum")
        return None if total[2] > 0 else float(total[0] / total[1])

    def setup(self) -> int:
        """Accelerator, model, optimizer, and the newest checkpoint when resuming: the step to start at.
        Nothing in the run directory changes here."""
        cfg = self.cfg = self.pipeline.recipe.train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.acc = make_accelerator(cfg, self.run_dir, sparse=bool(self.pipeline.members))
        if cfg.cpu_memory_cache and self.acc.device.type == "cpu":
            keep_freed_memory()
        world = self.acc.num_processes
        budget.check_split(cfg, world)
        budget.check_fits(self.pipeline.recipe, *self.pipeline.model_specs(), world=world)
        self.per_rank = cfg.batch_size // world
        torch.manual_seed(cfg.seed)
        module = self.pipeline.module
        optimizer = make_optimizer(module, cfg, self.acc.device)
        start = 0
        ckpt = checkpoint.latest(self.run_dir) if self.resume else None
        if self.resume and ckpt is None:
            raise UserError(f"{self.run_dir}: nothing to resume (no complete checkpoint)")
        if ckpt is None and warm_start.takes_weights(self.pipeline.recipe):
            warm_start.load_weights(module, self.pipeline.recipe)
        if ckpt is not None:
            state = checkpoint.read_state(ckpt)
            checkpoint.load_weights(module, ckpt)
            saved = checkpoint.load_optimizer(ckpt, module, len(optimizer.param_groups))
            set_optimizer_state_dict(module, optimizer, saved, options=RESUMED_STATE)
            for name, param in module.named_parameters():  # torch made their moments at step 1: start them as the run did
                if name not in saved["state"]:
                    optimizer.state.pop(param, None)
            for group, decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):  # the recipe's, which may have changed
                group.update(weight_decay=decay, betas=(cfg.beta1, cfg.beta2))
            start = state["step"]
            self.history = [r for r in state.get("history", []) if r["step"] <= start]
            self.window = list(state.get("window", []))
            self.pending = state.get("pending")
        self.tracker = Tracker(self.pipeline, self.run_dir, self.acc.is_main_process, plain=not self.show_bar)
        if cfg.keep_best and cfg.distributed == "fsdp":
            raise UserError("[train] keep_best: not available with distributed = \"fsdp\" yet; use ddp or keep_best = \"\"")
        check_keep_best(self.pipeline)
        if cfg.fingerprint_batches:
            self.fingerprints = open(self.run_dir / f"batches.rank{self.acc.process_index}.log", "a", buffering=1)
        peers.check_same_run(self.acc, self.pipeline, self.run_dir, start)
        if cfg.compile:
            module = torch.compile(module)
        self.model, self.optimizer = self.acc.prepare(module, optimizer)
        return start

    def diverged(self) -> str | None:
        """The first non-finite weight's name on any process (agreed: one collective), or None."""
        module = self.acc.unwrap_model(self.model)
        bad = checkpoint.first_nonfinite(dict(module.named_parameters()))
        flag = torch.tensor(float(bad is not None), device=self.acc.device)
        if self.acc.num_processes > 1:
            flag = self.acc.reduce(flag, reduction="sum")
        return (bad or "on another process") if flag > 0 else None

    def save(self, step: int, window: list[float], pending: dict | None = None) -> Path:
        """Checkpoint `step` on every process; refuse (and stop) when the weights are not finite."""
        bad = self.diverged()
        if bad is not None:
            raise UserError(f"step {step}: weight {bad} is not finite (training diverged); stopped, "
                            f"{last_good(self.run_dir)}; try a lower [train] lr, or grad_clip")
        self.acc.wait_for_everyone()
        module = self.acc.unwrap_model(self.model)
        weights = self.acc.get_state_dict(self.model) if self.cfg.distributed == "fsdp" else None
        optimizer = get_optimizer_state_dict(module, self.optimizer.optimizer, options=FULL_STATE)
        if self.acc.is_main_process:
            state = {"history": self.history, "window": window, "seed": self.cfg.seed}
            if pending is not None:
                state["pending"] = pending
            checkpoint.save(self.run_dir, step, module, optimizer, state, weights)
            if self.cfg.lora.rank:
                lora.save_adapter(module.core, self.cfg.lora, self.run_dir / "adapter")
        self.acc.wait_for_everyone()
        return self.run_dir / "checkpoints" / f"step_{step:07d}"

    @property
    def show_bar(self) -> bool:
        return self.progress and self.acc.is_main_process and sys.stderr.isatty()

    def save_best(self, step: int, record: dict) -> None:
        """Keep the weights of step `step` as checkpoints/best (this process; see `Tracker`)."""
        name = self.cfg.keep_best
        checkpoint.save_best(self.run_dir, step, self.acc.unwrap_model(self.model), {"metric": name, "value": record[name]})

    def train_step(self, step: int, stream) -> tuple[torch.Tensor, int]:
        """One optimizer step; returns this process's mean loss (a tensor) and its token count."""
        cfg, acc = self.cfg, self.acc
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        seed_step(random_generator(cfg.seed, step, acc.process_index).initial_seed(), acc.device)
        total, tokens = torch.zeros((), device=acc.device), 0
        for micro in range(cfg.grad_accum):
            batch = stream.batch(Slice(step, micro, acc.process_index, self.per_rank, cfg.batch_size, cfg.grad_accum))
            if self.fingerprints is not None:
                self.fingerprints.write(f"{step} {micro} {acc.process_index} {fingerprint(batch)}\n")
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss, stats = self.model(batch.to(acc.device))
                loss = self.global_mean(loss, stats)
                acc.backward(loss)
                if acc.sync_gradients and cfg.grad_clip:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            total += loss.detach().float()
            tokens += int(stats.get("tokens", 0))
        return total / cfg.grad_accum, tokens

    def global_mean(self, loss: torch.Tensor, stats: dict) -> torch.Tensor:
        """This process's share of the mean over every process's loss terms, times the number of
        processes (DDP averages gradients over processes): when the task says how many terms its
        loss averages (stats["targets"]) and processes hold different numbers, a per-process mean
        would weigh them unequally and several processes would not follow one."""
        world = self.acc.num_processes
        if world == 1 or "targets" not in stats:
            return loss
        mine = torch.tensor(float(stats["targets"]), device=loss.device)
        every = self.acc.reduce(mine.clone(), reduction="sum")
        return loss * (mine * world / every.clamp(min=1))

    def agree(self, step: int, loss: torch.Tensor, tokens: int, interrupt: Interrupt) -> tuple[float, int, bool]:
        """Average the loss over processes and agree on stopping (one collective per step)."""
        flags = torch.stack([loss, torch.tensor(float(tokens), device=loss.device), torch.tensor(float(interrupt.hit), device=loss.device)])
        if self.acc.num_processes > 1:
            flags = self.acc.reduce(flags, reduction="sum")
            flags[0] /= self.acc.num_processes
        value = float(flags[0])
        if not math.isfinite(value):
            if self.acc.is_main_process:  # the weights after `step` steps gave this loss: no longer "good"
                checkpoint.discard(self.run_dir, step)
            self.acc.wait_for_everyone()
            raise UserError(f"step {step + 1}: training loss is {value}; stopped, {last_good(self.run_dir)}; "
                            "try a lower [train] lr, or grad_clip")
        return value, int(flags[1]), bool(flags[2] > 0)

    def run(self) -> dict:
        """Set up, then train to `steps`; returns the last metrics record."""
        return self.train(self.setup())

    def evaluate_pending(self, val, interrupt: Interrupt) -> None:
        """Finish the log record whose evaluation a signal (or a failure) cut short before the checkpoint."""
        record, self.pending = self.pending, None
        loss = self.val_loss(self.model, val, interrupt)
        if loss is None:
            raise Interrupted(record["step"], checkpoint.latest(self.run_dir), self.run_dir)
        failure = self.record_evaluation(record, loss)
        if failure is not None:
            raise self.evaluation_error(record["step"], failure) from failure

    def record_evaluation(self, rec: dict, loss: float) -> Exception | None:
        """`record` an evaluation; what it raised on any process (the task's metrics, the loss
        curve, the best checkpoint), with the record taken back out of the history, or None."""
        failure = None
        try:
            self.record(rec, loss)
        except Exception as err:  # noqa: BLE001 -- a plugin's failure must not lose the trained steps
            failure = err
            if self.history and self.history[-1]["step"] == rec["step"]:
                self.history.pop()
        if self.acc.num_processes > 1:
            failed = self.acc.reduce(torch.tensor(float(failure is not None), device=self.acc.device), reduction="sum")
            if failed > 0 and failure is None:
                failure = UserError("the evaluation failed on another process")
        return failure

    def evaluation_error(self, step: int, failure: Exception) -> UserError:
        """One line: what failed, and that checkpoint `step` keeps the trained steps."""
        return UserError(f"step {step}: the evaluation stopped the run: {failure_words(self.pipeline, failure)}; "
                         f"the trained steps are kept "
                         f"(checkpoint step {step} in {self.run_dir}; --resume evaluates it again and continues)")

    def record(self, rec: dict, loss: float | None) -> None:
        """Log a record: with an evaluation, its validation loss and the task's metrics; then the
        tracker's hooks (plain line, loss curve, best checkpoint)."""
        if loss is not None:
            rec = {**rec, "val_loss": loss, **self.tracker.metrics(self.acc.unwrap_model(self.model))}
        self.log(rec)
        self.tracker.logged(rec, self.history)
        if self.tracker.best_so_far(rec, self.history):
            self.save_best(rec["step"], rec)

    def train(self, start: int) -> dict:
        """Steps `start` .. `steps`, with logging, evaluation and checkpoints; a signal stops after
        the current step (or evaluation batch) with a checkpoint, raising `Interrupted`."""
        cfg, task = self.cfg, self.pipeline.task
        train, val = task.batches("train", True), task.batches("val", False)
        peers.started(self.acc, cfg)
        bar = tqdm(total=cfg.steps, initial=start, disable=not self.show_bar, file=sys.stderr, dynamic_ncols=True,
                   desc="train")
        t0, window, win_tokens, win_t = time.perf_counter(), list(self.window), 0, time.perf_counter()
        elapsed0 = self.history[-1].get("elapsed_s", 0.0) if self.history else 0.0
        self.model.train()
        with Interrupt() as interrupt:
            if self.pending is not None:
                self.evaluate_pending(val, interrupt)
            for step in range(start, cfg.steps):
                loss, tokens, stopping = self.agree(step, *self.train_step(step, train), interrupt)
                window.append(loss)
                win_tokens += tokens
                done = self.done = step + 1
                bar.update(1)
                evaluate = done % cfg.eval_every == 0 or done == cfg.steps
                pending = failure = None
                if evaluate or done % cfg.log_every == 0:
                    now = time.perf_counter()
                    tps = win_tokens / max(now - win_t, 1e-9)
                    rec = {"step": done, "train_loss": sum(window) / len(window), "lr": lr_at(step, cfg),
                           "tokens_per_s": round(tps, 1), "elapsed_s": round(elapsed0 + now - t0, 2)}
                    loss = self.val_loss(self.model, val, interrupt) if evaluate else None
                    if not evaluate:
                        self.record(rec, None)
                    elif loss is not None:
                        failure = self.record_evaluation(rec, loss)
                    if evaluate and (loss is None or failure is not None):
                        pending, stopping = rec, True  # evaluated on resume, before the next step
                    else:
                        bar.set_postfix(loss=f"{rec['train_loss']:.4f}", tok_s=f"{tps:,.0f}")
                    window, win_tokens, win_t = [], 0, time.perf_counter()
                if done % cfg.checkpoint_every == 0 or done == cfg.steps or stopping:
                    saved = self.save(done, window, pending)
                if failure is not None:
                    bar.close()
                    raise self.evaluation_error(done, failure) from failure
                if stopping:
                    bar.close()
                    raise Interrupted(done, saved, self.run_dir)
        bar.close()
        self.acc.end_training()
        return self.history[-1] if self.history else {}
