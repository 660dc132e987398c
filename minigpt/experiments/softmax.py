"""Experiment 1: why attention divides q·k by sqrt(d) before the softmax.

Part of the minigpt.experiments package (see its docstring). Core module: imports torch and
minigpt.experiments.common only (never gradio or matplotlib).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .common import (DEFAULT_DIMS, DIM, EXAMPLE_ABS_MAX, EXAMPLE_LEN, EXAMPLE_LOGITS, MAX_DIMS, SOFTMAX_KNOBS, Table,
                     _check_knobs, _entropy, _Result, _single_threaded, fmt, parse_floats, parse_names)


# ---- 1. softmax scaling ------------------------------------------------------------------------------

@dataclass
class SoftmaxScaling(_Result):
    dims: list                      # head dimensions d
    score_var_unscaled: list        # variance of q·k over `pairs` random pairs, per d (theory: d)
    score_var_scaled: list          # variance of q·k / sqrt(d) (theory: 1)
    max_prob_unscaled: list         # mean over rows of the largest softmax probability
    max_prob_scaled: list
    entropy_unscaled: list          # mean softmax entropy in nats
    entropy_scaled: list
    seq_len: int                    # T
    uniform_max_prob: float         # 1/T
    uniform_entropy: float          # log T, the most a row over T keys can have
    rows: int
    pairs: int
    example_logits: list
    example_scale: float
    example_probs: list             # softmax(logits)
    example_probs_scaled: list      # softmax(example_scale * logits)
    example_entropy: float
    example_entropy_scaled: float
    seed: int

    def tables(self) -> list[Table]:
        rows = [[d, vu, vs, mu, ms, eu, es] for d, vu, vs, mu, ms, eu, es in zip(
            self.dims, self.score_var_unscaled, self.score_var_scaled, self.max_prob_unscaled,
            self.max_prob_scaled, self.entropy_unscaled, self.entropy_scaled)]
        main = Table(f"q·k scores and softmax over T={self.seq_len} keys (uniform: max prob "
                     f"{fmt(self.uniform_max_prob)}, entropy log T = {fmt(self.uniform_entropy)} nats)",
                     ["d", "var q·k", "var q·k/√d", "max p", "max p (scaled)", "entropy", "entropy (scaled)"], rows)
        ex = Table(f"example logits at ×1 and ×{fmt(self.example_scale)}", ["logit", "p (×1)",
                   f"p (×{fmt(self.example_scale)})"],
                   [[z, p, q] for z, p, q in zip(self.example_logits, self.example_probs, self.example_probs_scaled)]
                   + [["entropy", self.example_entropy, self.example_entropy_scaled]])
        return [main, ex]


@_single_threaded
def softmax_scaling(*, dims=DEFAULT_DIMS, seq_len=64, rows=256, pairs=4000, example_logits=EXAMPLE_LOGITS,
                    example_scale=8.0, seed=0) -> SoftmaxScaling:
    """Variance of q·k with and without 1/sqrt(d), and what softmax makes of such scores."""
    k = _check_knobs(SOFTMAX_KNOBS, dict(seq_len=seq_len, rows=rows, pairs=pairs, example_scale=example_scale,
                                         seed=seed))
    dims = [DIM.check("dims", d) for d in (parse_names(dims, "dims") if isinstance(dims, str) else dims)]
    if not 1 <= len(dims) <= MAX_DIMS:
        raise ValueError(f"dims must list between 1 and {MAX_DIMS} head dimensions, got {len(dims)}")
    dims = sorted(set(dims))
    logits = parse_floats(example_logits, "example_logits")
    if not EXAMPLE_LEN[0] <= len(logits) <= EXAMPLE_LEN[1]:
        raise ValueError(f"example_logits must have between {EXAMPLE_LEN[0]} and {EXAMPLE_LEN[1]} values, "
                         f"got {len(logits)}")
    if max(abs(z) for z in logits) > EXAMPLE_ABS_MAX:
        raise ValueError(f"example_logits must lie in [-{EXAMPLE_ABS_MAX:g}, {EXAMPLE_ABS_MAX:g}]")

    g = torch.Generator().manual_seed(k["seed"])
    T, R, N = k["seq_len"], k["rows"], k["pairs"]
    out = {name: [] for name in ("vu", "vs", "mu", "ms", "eu", "es")}
    for d in dims:
        # 1. Variance: N independent pairs of vectors with unit-variance entries.
        q, kk = torch.randn(2, N, d, generator=g).unbind(0)
        s = (q * kk).sum(-1)                                     # (N,)
        out["vu"].append(s.var().item())
        out["vs"].append((s / math.sqrt(d)).var().item())
        # 2. Softmax: R queries, each against the same T keys.
        Q, K = torch.randn(R, d, generator=g), torch.randn(T, d, generator=g)
        scores = Q @ K.T                                         # (R, T)
        for tag, sc in (("u", scores), ("s", scores / math.sqrt(d))):
            p = torch.softmax(sc, dim=-1)
            out["m" + tag].append(p.max(-1).values.mean().item())
            out["e" + tag].append(_entropy(p).mean().item())

    z = torch.tensor(logits, dtype=torch.float64)
    p1, p2 = torch.softmax(z, -1), torch.softmax(k["example_scale"] * z, -1)
    return SoftmaxScaling(
        dims=dims, score_var_unscaled=out["vu"], score_var_scaled=out["vs"], max_prob_unscaled=out["mu"],
        max_prob_scaled=out["ms"], entropy_unscaled=out["eu"], entropy_scaled=out["es"], seq_len=T,
        uniform_max_prob=1.0 / T, uniform_entropy=math.log(T), rows=R, pairs=N, example_logits=logits,
        example_scale=k["example_scale"], example_probs=p1.tolist(), example_probs_scaled=p2.tolist(),
        example_entropy=_entropy(p1).item(), example_entropy_scaled=_entropy(p2).item(), seed=k["seed"])
