"""What a training configuration will cost before it runs: parameters, memory, time per step.

The Train tab shows this while the knobs move. Time per step is a small speed model (fixed
overheads plus FLOPs at a rate) that each finished run in the process calibrates. Core module:
imports the config and train_spec modules only (never torch, gradio or matplotlib).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .limits import Limits
from .config import GPTConfig, estimate_params
from .train_spec import TrainSpec

# Rough defaults per device kind: (FLOP/s, seconds of overhead a step, seconds a layer), refined by each run.
# "cpu-bf16": a CPU with native bf16, where training runs under bf16 autocast (the 2-core build machine:
# the default model's step 77-112 ms, predicted 88 ms; at the fp32 rate it was 166 ms).
SPEED = {"cpu": (100e9, 3e-3, 1.5e-3), "cpu-bf16": (200e9, 3e-3, 1.5e-3), "cuda": (20e12, 8e-3, 1e-3),
         "mps": (2e12, 10e-3, 2e-3)}


@dataclass
class Estimate:
    """The Train tab's live read-out of a configuration, or the reason it cannot work."""
    ok: bool
    error: str = ""
    params: int = 0
    vocab_size: int = 0
    memory_mb: float = 0.0
    step_ms: float = 0.0
    iters: int = 0
    seconds: float = 0.0
    notes: list = field(default_factory=list)


def train_flops_per_token(cfg: GPTConfig) -> float:
    """≈ 6 × non-embedding parameters + attention (PaLM appendix B), forward and backward."""
    if cfg.model == "bigram":
        return 6.0 * cfg.vocab_size
    params = estimate_params(cfg, non_embedding=True)
    return 6.0 * params + 12.0 * cfg.n_layer * cfg.block_size * cfg.n_embd


def muon_params(cfg: GPTConfig) -> int:
    """Parameters Muon trains (minigpt/optim.py's `muon_split`): the 2-D weights inside the blocks,
    c_attn (3C×C) and the attention's c_proj (C×C), plus the MLP's c_fc and c_proj (4C×C each)."""
    if cfg.model == "bigram":
        return 0
    C = cfg.n_embd
    return cfg.n_layer * (4 * C * C + (8 * C * C if cfg.mlp else 0))


def optimizer_bytes(cfg: GPTConfig, optimizer: str = "adamw") -> float:
    """fp32 optimizer state: AdamW keeps two moments a parameter (8 bytes); Muon one momentum buffer
    (4 bytes) for each matrix it trains, and AdamW's two moments for the rest."""
    p = estimate_params(cfg)
    m = muon_params(cfg) if optimizer == "muon" else 0
    return 8.0 * (p - m) + 4.0 * m


def train_memory_bytes(cfg: GPTConfig, batch_size: int, optimizer: str = "adamw") -> float:
    """Weights and gradients (8 bytes a parameter), the optimizer's state, plus fp32 activations."""
    p = estimate_params(cfg)
    B, T, V = batch_size, cfg.block_size, cfg.vocab_size
    if cfg.model == "bigram":
        acts = B * T * V * 4 * 3
    else:
        # Activation elements per token per layer (Korthikanti et al.: 34·C + 5·heads·T = attention 11·C,
        # MLP 19·C, two norms 2·C each); the switches take out what they remove.
        norms = (2 if cfg.mlp else 1) * (2 if cfg.norm != "none" else 0)
        per_layer = (11 + (19 if cfg.mlp else 0) + norms) * cfg.n_embd + 5 * cfg.n_head * T
        acts = B * T * (cfg.n_layer * per_layer + 3 * V) * 4
    return 8.0 * p + optimizer_bytes(cfg, optimizer) + acts


class SpeedModel:
    """Seconds per training step on one device kind, calibrated by measured runs (not thread-safe: advisory)."""

    def __init__(self, device: str, dtype: str = "float32"):
        kind = device.split(":")[0]
        kind = "cpu-bf16" if kind == "cpu" and dtype == "bfloat16" else kind  # the dtype training will use
        self.rate, self.overhead, self.per_layer = SPEED.get(kind, SPEED["cpu"])
        self.factor, self.calibrated = 1.0, False

    def step_seconds(self, cfg: GPTConfig, batch_size: int) -> float:
        """Predicted seconds per training step: fixed overheads plus FLOPs at a rate, times the calibration."""
        flops = train_flops_per_token(cfg) * batch_size * cfg.block_size
        layers = cfg.n_layer if cfg.model == "gpt" else 0
        return (self.overhead + self.per_layer * layers + flops / self.rate) * self.factor

    def calibrate(self, cfg: GPTConfig, batch_size: int, measured_step: float):
        """Move the estimate halfway (in log scale) towards a finished run's measured step time, within 4×."""
        predicted = self.step_seconds(cfg, batch_size) / self.factor
        ratio = min(4.0, max(0.25, measured_step / max(predicted, 1e-9)))
        self.factor = math.sqrt(self.factor * ratio)
        self.calibrated = True


def estimate(spec: TrainSpec, vocab_size: int, limits: Limits, speed: SpeedModel) -> Estimate:
    """Parameters, memory and time of `spec`, or the first reason it cannot run."""
    try:
        cfg = spec.model_config(vocab_size, limits)
        tcfg = spec.train_config(limits)
    except ValueError as e:
        return Estimate(ok=False, error=str(e))
    step = speed.step_seconds(cfg, tcfg.batch_size)
    if spec.budget == "seconds":
        seconds = float(spec.amount)
        iters = int(seconds / step)
    else:
        iters = int(spec.amount)
        seconds = min(iters * step, limits.max_train_seconds)
    notes = []
    if spec.budget == "iterations" and iters * step > limits.max_train_seconds:
        notes.append(f"stops at the time limit of {limits.max_train_seconds:g} s (MINIGPT_MAX_TRAIN_SECONDS)")
    if cfg.model == "bigram":
        notes.append("the bigram model ignores the shape knobs: it is one vocab × vocab table")
        if tcfg.optimizer == "muon":
            notes.append("it has no blocks, so no matrices for Muon: AdamW trains it")
    return Estimate(ok=True, params=estimate_params(cfg), vocab_size=vocab_size,
                    memory_mb=train_memory_bytes(cfg, tcfg.batch_size, tcfg.optimizer) / 2**20, step_ms=step * 1000,
                    iters=iters, seconds=seconds, notes=notes)


def run_seconds(budget: str, tcfg, cfg: GPTConfig, speed: SpeedModel) -> float:
    """How long a run should take (the training queue's estimated waits): its time budget, or its steps at
    the predicted step time, capped by its time limit."""
    if budget == "seconds":
        return float(tcfg.max_seconds)
    return min(tcfg.max_iters * speed.step_seconds(cfg, tcfg.batch_size), float(tcfg.max_seconds))
