"""Experiment 2: vanishing gradients in a deep MLP, and exploding ones tamed by clip_grad_norm_.

Part of the minigpt.experiments package (see its docstring). Core module: imports torch and
minigpt.experiments.common only (never gradio or matplotlib).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import (ACTIVATIONS, DEFAULT_ACTIVATIONS, GRADIENT_KNOBS, INITS, Table, _check_bool, _check_knobs, _Result,
                     _single_threaded, fmt, parse_names)


# ---- 2. vanishing and exploding gradients ---------------------------------------------------------------

@dataclass
class GradientFlow(_Result):
    layers: list                    # 1 .. depth, input layer first
    grad_norms: dict                # activation -> ||dL/dW|| per layer (Frobenius), input layer first
    first_last_ratio: dict          # activation -> grad norm of layer 1 / grad norm of the last layer
    depth: int
    width: int
    batch: int
    init: str
    residual: bool
    layernorm: bool
    # the clipping demo: a deep linear stack with weights of std explode_gain/sqrt(width)
    explode_gain: float
    max_norm: float
    lr: float
    total_norm_before: float        # total gradient norm at the first step, what clip_grad_norm_ returns
    total_norm_after: float         # measured again after clipping (≤ max_norm)
    loss_unclipped: list            # loss before each SGD step, no clipping (inf/nan once it blows up)
    loss_clipped: list              # the same run with clip_grad_norm_(max_norm) before each step
    grad_norm_unclipped: list       # total gradient norm at each step
    grad_norm_clipped: list         # total norm before clipping at each step of the clipped run
    diverged_at: int | None         # first step whose unclipped loss or gradient norm is not finite
    seed: int

    def tables(self) -> list[Table]:
        acts = list(self.grad_norms)
        flow = Table(f"gradient norm per layer (depth {self.depth}, width {self.width}, init {self.init}"
                     f"{', residual' if self.residual else ''}{', LayerNorm' if self.layernorm else ''})",
                     ["layer"] + acts, [[i] + [self.grad_norms[a][i - 1] for a in acts] for i in self.layers]
                     + [["first/last"] + [self.first_last_ratio[a] for a in acts]])
        clip = Table(f"clipping demo (linear stack, gain {fmt(self.explode_gain)}, lr {fmt(self.lr)}): first "
                     f"step total norm {fmt(self.total_norm_before)} → {fmt(self.total_norm_after)} after "
                     f"clip_grad_norm_(max_norm={fmt(self.max_norm)})",
                     ["step", "loss (no clip)", "grad norm (no clip)", "loss (clipped)", "grad norm before clip"],
                     [[i, a, b, c, d] for i, (a, b, c, d) in enumerate(zip(
                         self.loss_unclipped, self.grad_norm_unclipped, self.loss_clipped, self.grad_norm_clipped))])
        return [flow, clip]


_ACT_FNS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "gelu": F.gelu}


def _init_weight(init: str, width: int, g: torch.Generator) -> torch.Tensor:
    shape, dt = (width, width), torch.float64
    if init == "default":
        return (torch.rand(shape, generator=g, dtype=dt) * 2 - 1) / math.sqrt(width)
    std = {"xavier": 1 / math.sqrt(width), "kaiming": math.sqrt(2 / width), "small": 0.01, "large": 1.0}[init]
    return torch.randn(shape, generator=g, dtype=dt) * std


def _forward(x, weights, act, residual=False, layernorm=False):
    h = x
    for w in weights:
        z = F.layer_norm(h, h.shape[-1:]) if layernorm else h     # pre-norm, as in GPT-2
        z = act(z @ w.T)
        h = h + z if residual else z
    return h


def _total_norm(weights) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(w.grad) for w in weights])).item()


def _sgd_run(weights, x, y, lr, steps, max_norm):
    """Plain SGD on MSE. Per step: the loss, the total grad norm, and the norm actually used for the step."""
    losses, norms, used = [], [], []
    for _ in range(steps):
        loss = F.mse_loss(_forward(x, weights, lambda t: t), y)
        for w in weights:
            w.grad = None
        loss.backward()
        if max_norm is None:
            norm = _total_norm(weights)
        else:
            norm = torch.nn.utils.clip_grad_norm_(weights, max_norm).item()  # returns the norm before clipping
        losses.append(loss.item())
        norms.append(norm)
        used.append(_total_norm(weights))
        if not (math.isfinite(losses[-1]) and math.isfinite(norm)):
            break  # diverged: every later step is nan, and computing with nan is slow
        with torch.no_grad():
            for w in weights:
                w -= lr * w.grad
    pad = [math.nan] * (steps - len(losses))
    return losses + pad, norms + pad, used + pad


@_single_threaded
def gradient_flow(*, depth=20, width=32, batch=64, activations=DEFAULT_ACTIVATIONS, init="default",
                  residual=False, layernorm=False, explode_gain=1.5, max_norm=1.0, lr=0.05, sgd_steps=10,
                  seed=0) -> GradientFlow:
    """Per-layer weight-gradient norms of a deep MLP, and an exploding stack trained with and without clipping."""
    k = _check_knobs(GRADIENT_KNOBS, dict(depth=depth, width=width, batch=batch, explode_gain=explode_gain,
                                          max_norm=max_norm, lr=lr, sgd_steps=sgd_steps, seed=seed))
    acts = parse_names(activations, "activations")
    bad = [a for a in acts if a not in ACTIVATIONS]
    if not acts or bad:
        raise ValueError(f"activations must be some of {', '.join(ACTIVATIONS)}, got {', '.join(bad) or 'none'}")
    acts = list(dict.fromkeys(acts))
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    residual, layernorm = _check_bool("residual", residual), _check_bool("layernorm", layernorm)
    L, W, B = k["depth"], k["width"], k["batch"]

    # float64 throughout: sigmoid's gradients at depth 50 fall below float32's smallest number.
    g = torch.Generator().manual_seed(k["seed"])
    x = torch.randn(B, W, generator=g, dtype=torch.float64)
    y = torch.randn(B, W, generator=g, dtype=torch.float64)
    base = [_init_weight(init, W, g) for _ in range(L)]       # every activation starts from the same weights

    # 1. One backward pass per activation: how big is dL/dW at each layer?
    norms, ratio = {}, {}
    for a in acts:
        weights = [w.clone().requires_grad_() for w in base]
        F.mse_loss(_forward(x, weights, _ACT_FNS[a], residual, layernorm), y).backward()
        norms[a] = [torch.linalg.vector_norm(w.grad).item() for w in weights]
        ratio[a] = norms[a][0] / norms[a][-1] if norms[a][-1] > 0 else math.nan

    # 2. Exploding: a linear stack with too-large weights, SGD with and without clip_grad_norm_.
    std = k["explode_gain"] / math.sqrt(W)
    big = [torch.randn(W, W, generator=g, dtype=torch.float64) * std for _ in range(L)]
    runs = {}
    for tag, clip in (("plain", None), ("clipped", k["max_norm"])):
        runs[tag] = _sgd_run([w.clone().requires_grad_() for w in big], x, y, k["lr"], k["sgd_steps"], clip)
    before, after = runs["clipped"][1][0], runs["clipped"][2][0]
    diverged = next((i for i, (v, n) in enumerate(zip(*runs["plain"][:2])) if not math.isfinite(v * n)), None)

    return GradientFlow(
        layers=list(range(1, L + 1)), grad_norms=norms, first_last_ratio=ratio, depth=L, width=W, batch=B,
        init=init, residual=residual, layernorm=layernorm, explode_gain=k["explode_gain"], max_norm=k["max_norm"],
        lr=k["lr"], total_norm_before=before, total_norm_after=after, loss_unclipped=runs["plain"][0],
        loss_clipped=runs["clipped"][0], grad_norm_unclipped=runs["plain"][1],
        grad_norm_clipped=runs["clipped"][1], diverged_at=diverged, seed=k["seed"])
