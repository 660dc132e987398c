"""Training: a `Run` (model, optimizer, data, progress) and `train()`, a generator of events.

The trainer knows nothing about the CLI or the page: it yields small dataclass events
(Start, Step, Eval, Sample, Done); the CLI prints them, the app draws them, tests collect them.
Calling `train()` again on the same Run continues where it stopped.
"""

from __future__ import annotations

import contextlib
import math
import platform
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

import torch

from . import __version__, train_kernels
from .data import Splits, get_batch, val_tensor
from .device import Precision, ThreadTuner, keep_freed_memory, pick_device, pick_precision
from .diagnostics import block_forward_stats, block_grad_norms
from .evaluate import estimate_loss, full_val_loss
from .generate import generate
from .limits import Limits
from .config import TrainConfig  # noqa: F401  (defined torch-free there; callers import it from here too)
from .events import STOP_REASONS, Done, Eval, Sample, Start, Step, event_dict  # noqa: F401  (the same)
from .model import GPTConfig, arch_summary, build_model
from .optim import make_optimizer, optimizer_kind
from .sampling import SamplingConfig

# ---- the run ------------------------------------------------------------------------------------

def lr_at(cfg: TrainConfig, progress: float, step: int, warmup: bool = True) -> float:
    """Linear warmup over warmup_iters steps, then cosine from lr to min_lr as progress goes 0 → 1."""
    if warmup and step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / (cfg.warmup_iters + 1)
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# Where a cosine schedule of H steps ends for the default recipe (4×4×128, context 64, batch 16,
# lr 6e-3 → 6e-5; Tiny Shakespeare, char, full-validation loss, seed 1337; ±0.01 from seed to seed).
PLAN_TABLE = ((400, 2.16), (600, 2.015), (800, 1.92), (1000, 1.87), (1500, 1.757), (2000, 1.71),
              (3000, 1.651), (6000, 1.564))
PLAN_TOKENS_PER_STEP = 16 * 64
# The same for Muon, the default (muon_lr 0.03 with weight decay 0.1, lr 6e-3 → 6e-5, batch 48): it
# learns far more per step. Measured 2026-11-29 23:00-23:20 UTC with `train --max-iters H --batch-size 48`,
# seed 1337; at batch 32 it was ((150, 2.219), (300, 1.874), (500, 1.713), (800, 1.612), (1500, 1.539),
# (3000, 1.481)). Plans under SHORT_PLAN steps train with SHORT_PLAN_RECIPE, and the points below it are
# that recipe's (measured 2026-11-30 14:41-14:45 UTC on the 2-core Xeon; the 450-step point is the
# default recipe's, which a 450-step plan uses; the default recipe at 150 / 200 / 300: 2.160, 1.970, 1.784).
MUON_PLAN_TABLE = ((150, 1.990), (200, 1.850), (300, 1.740), (450, 1.676), (500, 1.652), (800, 1.577),
                   (1500, 1.508), (3000, 1.474))
MUON_PLAN_TOKENS_PER_STEP = 48 * 64
# A short cosine wants a short warmup, a higher peak and shorter memories: the default's 50 warmup steps
# are a quarter of a 200-step plan. Full-val of 200-step plans (seed 1337): the default recipe 1.970;
# Muon's peak 0.05 and 10 warmup steps 1.900 (peak 0.04: +0.012, 0.06: +0.005, 0.08: +0.06; warmup 25:
# +0.007); with AdamW's beta2 0.95 as well 1.869 (seeds 1 and 2: 1.911 → 1.890, 1.905 → 1.893; beta2
# 0.9: 1.874; with it, Muon's peak 0.06 1.906, warmup 5 1.882, AdamW's peak 4e-3 1.885 and 1e-2 1.899,
# its beta1 0.8 1.889, weight decay 0.2 1.874, clipping at 0.5 1.889 and at 2 1.900; with beta2 0.99,
# no weight decay 1.929 and no clipping 2.016); and with Muon's momentum 0.9 instead of 0.95 1.850
# (seeds 1 and 2: 1.873, 1.869; 0.85: 1.857, 0.97: 1.941, without Nesterov 1.972). Over 1750 steps a
# Muon peak above 0.03 ends higher (0.04: +0.010).
SHORT_PLAN = 450
SHORT_PLAN_RECIPE = {"muon_lr": 0.05, "warmup_iters": 10, "beta2": 0.95, "muon_momentum": 0.9}
PLAN_MARGIN = 0.03  # plan for a schedule ending this far below the target: the run stops on the way


def plan_iters(target: float, tokens_per_step: int | None = None, optimizer: str = "adamw") -> int:
    """Steps for a target run's cosine: where the default recipe's schedule ends a margin below it.

    A run decays its learning rate over its whole horizon, so a target run should plan a horizon
    near where the target is reached, not one far beyond it (a 3000-step plan is at 1.90 only
    after ~1050 steps); and one a little beyond is better than one ending right there (measured
    over 3 seeds: a 1000-step plan is at 1.87-1.89 by step 900, a 900-step plan ends at 1.89-1.91).
    Interpolated in log-steps from PLAN_TABLE and scaled by tokens per step. On other data or
    models it is a guess: after the plan the run goes on at min_lr until the target or max_iters.
    """
    goal = target - PLAN_MARGIN
    pts, base = (MUON_PLAN_TABLE, MUON_PLAN_TOKENS_PER_STEP) if optimizer == "muon" else (PLAN_TABLE, PLAN_TOKENS_PER_STEP)
    tokens_per_step = tokens_per_step or base
    i = next((k for k in range(1, len(pts) - 1) if goal > pts[k][1]), len(pts) - 1)
    (h0, l0), (h1, l1) = pts[i - 1], pts[i]
    log_h = math.log(h0) + (goal - l0) / (l1 - l0) * (math.log(h1) - math.log(h0))
    return max(1, round(math.exp(log_h) * base / tokens_per_step))


def short_plan_recipe(cfg: TrainConfig, horizon: int) -> TrainConfig:
    """The config a fresh Muon target run planned over `horizon` steps trains with: SHORT_PLAN_RECIPE
    in place of the defaults' Muon peak and warmup when the plan is shorter than SHORT_PLAN; a value
    set away from the default is kept, and any other run's config is returned as it is."""
    default = TrainConfig()
    if cfg.optimizer != "muon" or horizon >= SHORT_PLAN:
        return cfg
    return replace(cfg, **{k: v for k, v in SHORT_PLAN_RECIPE.items() if getattr(cfg, k) == getattr(default, k)})


@dataclass
class Run:
    """Everything a training session carries between calls of train(): Stop keeps it, Continue reuses it."""
    model: torch.nn.Module
    tokenizer: object
    splits: Splits
    precision: Precision
    optimizer: torch.optim.Optimizer | None = None
    iters: int = 0
    seconds: float = 0.0
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    data_name: str = "text"
    history: list = field(default_factory=list)  # Eval events of the whole run, for plots
    last_train_config: dict = field(default_factory=dict)

    @classmethod
    def create(cls, model_config: GPTConfig, tokenizer, splits: Splits, device: str = "auto",
               dtype: str = "auto", seed: int = 1337, data_name: str = "text") -> "Run":
        """A fresh model on the chosen device, initialised from `seed`."""
        device = pick_device(device)
        torch.manual_seed(seed)  # init only; batches use their own generator
        model = build_model(model_config).to(device)
        precision = pick_precision(device, dtype, model_config.n_embd if model_config.model == "gpt" else None)
        return cls(model=model, tokenizer=tokenizer, splits=splits, precision=precision, data_name=data_name)

    def run_card(self) -> dict:
        """What a run needs to be repeated, and what it reached (stored in the checkpoint)."""
        return {
            "data": self.data_name,
            "tokenizer": self.tokenizer.kind,
            "config": self.model.config.to_dict(),
            "architecture": arch_summary(self.model.config),
            "train_config": self.last_train_config,
            "seed": self.last_train_config.get("seed"),
            "optimizer": self.last_train_config.get("optimizer"),
            "iters": self.iters,
            "seconds": round(self.seconds, 2),
            "val_loss": self.final_val_loss,
            "best_val_loss_estimate": self.best_val_loss,
            "device": self.precision.device,
            "dtype": self.precision.dtype,
            "torch_version": torch.__version__,
            "minigpt_version": __version__,
            "machine": platform.machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def _eval_batches(splits: Splits, cfg: TrainConfig, block: int, device) -> dict:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    bs = max(cfg.batch_size, 32)
    out = {}
    for name, data in (("train", splits.train), ("val", splits.val)):
        if len(data) > block + 1:
            out[name] = [get_batch(data, bs, block, g, device) for _ in range(cfg.eval_iters)]
    return out


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(run: Run, cfg: TrainConfig, stop: threading.Event | None = None, limits: Limits | None = None,
          team=None):
    """Train `run` under `cfg`, yielding Start, Step (every step), Eval, Sample and finally Done.

    Ends on max_iters, max_seconds, target (full-val loss ≤ target_val_loss), a stop request
    (checked every step), or a non-finite loss (diverged: the last good weights are restored).
    With a `team` (minigpt/distributed.py: this process's place in a torchrun job), each process
    trains on its share of every batch through DDP; only rank 0 evaluates and samples, and the ranks
    agree on every stop so they leave the loop together.
    """
    # On a CPU, keep the thread count that runs fastest right now (see ThreadTuner), each thread on a
    # core of its own while all of them run (with the kernels); a torchrun job sets its own threads.
    tuner = (ThreadTuner(pin=train_kernels.thread_pinner(run.model)) if team is None and run.precision.device == "cpu"
             else None)
    keep_freed_memory()  # a step's activations are reused, not faulted in again (4-20% of a CPU step)
    try:
        yield from _train(run, cfg, stop, limits, team, tuner)
    finally:
        if tuner is not None:
            tuner.restore()


def _train(run: Run, cfg: TrainConfig, stop, limits, team, tuner):
    cfg.validate(limits)
    block = run.model.config.block_size
    tokens_per_step = cfg.batch_size * block
    # The cosine runs over `horizon` steps: max_iters, or for a fresh target run a planned horizon
    # (then min_lr until the target or max_iters). Near the end of the plan, where the target is
    # usually reached, it is checked every 1/20 of the plan, with the full protocol at the end, and
    # after the plan every 1/10 of it.
    horizon = cfg.max_iters
    if cfg.target_val_loss is not None and run.iters == 0:
        horizon = min(horizon, cfg.plan_iters or plan_iters(cfg.target_val_loss, tokens_per_step, cfg.optimizer))
        cfg = short_plan_recipe(cfg, horizon)
    run.last_train_config = asdict(cfg)
    world = team.world_size if team is not None else 1
    main = team is None or team.is_main
    micro_batch, rest = divmod(cfg.batch_size, cfg.grad_accum * world)
    if rest or not micro_batch:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of grad_accum ({cfg.grad_accum}) "
                         f"× processes ({world})")
    model, precision = run.model, run.precision
    device = precision.device
    fresh = run.optimizer is None or optimizer_kind(run.optimizer) != cfg.optimizer
    if fresh:
        run.optimizer = make_optimizer(model, cfg, device)  # a switch of optimizer starts a fresh one
    opt = run.optimizer
    for group in opt.param_groups:  # one schedule, each optimizer with its own peak; this run's momenta
        muon = group.get("kind") == "muon"
        group["peak_lr"] = cfg.muon_lr if muon else cfg.lr
        group.update({"momentum": cfg.muon_momentum} if muon else {"betas": (group["betas"][0], cfg.beta2)})
    params = [p for p in model.parameters() if p.requires_grad]
    # A continued run draws new batches; each rank draws its own.
    gen = torch.Generator().manual_seed(cfg.seed + run.iters + 1_000_003 * (team.rank if team else 0))
    evals = _eval_batches(run.splits, cfg, block, device) if main else {}
    has_val = len(run.splits.val) > block + 1
    diag_x = evals["val"][0][0][:8] if has_val and main else None  # the diagnostics' fixed batch
    if model.config.norm == "batch" and micro_batch * block < 2:
        raise ValueError("BatchNorm needs more than one token per micro-batch to normalise over: raise "
                         "batch_size or block_size, or use another norm")
    fwd = team.wrap(model) if team is not None else model  # DDP for forward/backward; `model` is what we save
    good = _snapshot(model)
    sync_every = 1 if device.split(":")[0] == "cpu" else 10  # reading the loss is a host sync on GPUs
    warmup = run.iters == 0 or fresh  # a continued run's optimizer is already warmed up
    planned = horizon < cfg.max_iters
    check_every = max(1, horizon // 20)
    yield Start(device=device, dtype=precision.dtype, params=model.num_params(),
                train_tokens=len(run.splits.train), val_tokens=len(run.splits.val),
                max_iters=cfg.max_iters, max_seconds=cfg.max_seconds, start_iter=run.iters,
                attention="kernel" if train_kernels.used_by(model) else "eager")

    model.train()
    t0 = time.perf_counter()
    last_t, last_it = t0, 0
    reason, message, n_evals = "max_iters", "", 0
    it = 0
    for it in range(cfg.max_iters):
        now = time.perf_counter()
        elapsed = now - t0
        requested = stop is not None and stop.is_set()
        if team is not None:  # every rank follows rank 0's clock and any rank's stop request
            elapsed, requested = team.agree_clock(it, elapsed, requested, every=sync_every)
        if requested:
            reason = "stopped"
            break
        if cfg.max_seconds is not None and elapsed >= cfg.max_seconds:
            reason = "max_seconds"
            break
        progress = it / horizon
        if cfg.max_seconds is not None:
            progress = max(progress, elapsed / cfg.max_seconds)
        lr = lr_at(cfg, progress, it, warmup)
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * lr / cfg.lr
        plan_end = planned and it + 1 == horizon
        near_end = planned and horizon * 0.8 <= it + 1 < horizon and (it + 1) % check_every == 0
        # A plan that ended short of the target (another batch, data or model than the plan's table)
        # goes on at min_lr: checked every tenth of the plan, not only every eval_interval (a 250-step
        # plan at batch 32 reached 1.90 only at its step-750 eval, 55 s after it got there).
        past_plan = planned and it + 1 > horizon and (it + 1 - horizon) % (2 * check_every) == 0
        regular = (it + 1) % cfg.eval_interval == 0
        evaluate = (regular or near_end or plan_end or past_plan) and has_val

        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            x, y = get_batch(run.splits.train, micro_batch, block, gen, device)
            # DDP averages the gradients across ranks on the last micro-step only.
            skip_sync = fwd is not model and micro < cfg.grad_accum - 1
            with fwd.no_sync() if skip_sync else contextlib.nullcontext():
                with precision.autocast():
                    _, loss = fwd(x, y)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        loss = loss_sum / cfg.grad_accum
        layer_grads = block_grad_norms(model) if evaluate and main else []  # before clipping and zero_grad
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        check = (it + 1) % sync_every == 0
        bad = check and not (math.isfinite(loss.item()) and math.isfinite(float(norm)))
        if check and team is not None:  # one rank's blow-up stops them all
            bad = team.agree("diverged" if bad else None) == "diverged"
        if bad:
            opt.zero_grad(set_to_none=True)
            model.load_state_dict(good)
            reason = "diverged"
            message = (f"the loss became {loss.item()} at step {run.iters + 1}: training stopped and the last "
                       f"good weights were restored (try a lower learning rate)")
            break
        opt.step()
        opt.zero_grad(set_to_none=True)
        run.iters += 1
        if tuner is not None:
            tuner.tick()

        if check:
            now = time.perf_counter()
            elapsed = now - t0
            tps = (it + 1 - last_it) * tokens_per_step / max(now - last_t, 1e-9)
            last_t, last_it = now, it + 1
            per_step = elapsed / (it + 1)
            left = ((horizon if it < horizon else cfg.max_iters) - it - 1) * per_step
            if cfg.max_seconds is not None:
                left = min(left, max(cfg.max_seconds - elapsed, 0.0))
            yield Step(iter=run.iters, loss=loss.item(), lr=lr, grad_norm=float(norm), tokens_per_s=tps,
                       elapsed=elapsed, eta=left, progress=min(1.0, max(progress, (it + 1) / horizon)))

        if evaluate:
            if tuner is not None:
                tuner.pause()
            verdict = None  # rank 0 evaluates; every rank acts on what it finds
            if main:
                act_std, entropy = block_forward_stats(model, diag_x)
                # The checks near a plan's end decide on the validation loss: no training estimate
                # (0.35 s each for the default model, in a target run of ~30 s).
                train_loss = estimate_loss(model, evals["train"], precision) if regular else None
                ev = Eval(iter=run.iters, train_loss=train_loss,
                          val_loss=estimate_loss(model, evals["val"], precision), elapsed=time.perf_counter() - t0,
                          layer_grad_norms=layer_grads, layer_act_std=act_std, layer_attn_entropy=entropy)
                if not math.isfinite(ev.val_loss):
                    verdict = "diverged"
                else:
                    run.history.append(ev)
                    run.best_val_loss = ev.val_loss if run.best_val_loss is None else min(run.best_val_loss,
                                                                                         ev.val_loss)
                    n_evals += regular  # the extra checks near a plan's end get no samples
                    yield ev
                    if regular and cfg.sample_every and n_evals % cfg.sample_every == 0:
                        yield Sample(iter=run.iters,
                                     text=sample_text(run, cfg.sample_tokens, seed=cfg.seed + run.iters))
                    if cfg.target_val_loss is not None and (ev.val_loss <= cfg.target_val_loss or plan_end):
                        # The estimate is noisy: confirm with the full protocol before stopping.
                        run.final_val_loss = full_val_loss(model, val_tensor(run.splits.val), block)
                        if run.final_val_loss <= cfg.target_val_loss:
                            verdict = "target"
            if team is not None:
                verdict = team.agree(verdict)
            if verdict == "diverged":
                model.load_state_dict(good)
                reason, message = "diverged", "the validation loss is not finite; last good weights restored"
                break
            good = _snapshot(model)
            if verdict == "target":
                reason = "target"
                break
            # Evals and samples are not training time: keep them out of the throughput figure.
            last_t = time.perf_counter()

    train_seconds = time.perf_counter() - t0
    run.seconds += train_seconds
    steps_done = it + 1 if reason in ("max_iters", "target") else it
    if reason != "target":
        run.final_val_loss = full_val_loss(model, val_tensor(run.splits.val), block) if main and has_val else None
    yield Done(reason=reason, iters=run.iters, seconds=run.seconds,
               tokens_per_s=steps_done * tokens_per_step / max(train_seconds, 1e-9),
               best_val_loss=run.best_val_loss, final_val_loss=run.final_val_loss, message=message)


def sample_text(run: Run, tokens: int, seed: int = 0, prompt: str = "") -> str:
    """A short sample at temperature 0.8, to watch the model learn."""
    steps = generate(run.model, run.tokenizer, prompt, tokens, SamplingConfig("temperature", 0.8), seed=seed)
    return prompt + "".join(s.text for s in steps)
