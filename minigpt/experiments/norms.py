"""Experiment 3: LayerNorm normalises each sample, BatchNorm each feature (and fails at batch 1).

Part of the minigpt.experiments package (see its docstring). Core module: imports torch and
minigpt.experiments.common only (never gradio or matplotlib).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .common import (BN_MOMENTUM, EPS, NORM_KNOBS, WARMUP_BATCH, Table, _check_knobs, _finite_or_none, _Result,
                     _single_threaded, fmt)


# ---- 3. LayerNorm vs BatchNorm ------------------------------------------------------------------------

@dataclass
class NormStats:
    """Mean and (population) std of a (batch, features) matrix along each axis, plus the matrix."""
    per_sample_mean: list           # one per row, across its features
    per_sample_std: list
    per_feature_mean: list          # one per column, across the batch
    per_feature_std: list
    values: list                    # the matrix itself, rows = samples
    manual_max_abs_diff: float | None = None   # max |formula by hand - torch.nn|; None: nothing to compare
    error: str | None = None        # what PyTorch raised, if it refused

    @classmethod
    def of(cls, m: torch.Tensor, **extra) -> "NormStats":
        return cls(per_sample_mean=m.mean(1).tolist(), per_sample_std=m.std(1, correction=0).tolist(),
                   per_feature_mean=m.mean(0).tolist(), per_feature_std=m.std(0, correction=0).tolist(),
                   values=m.tolist(), **extra)


@dataclass
class NormCompare(_Result):
    input: NormStats
    layernorm: NormStats
    batchnorm: NormStats            # train mode: statistics of this batch
    batchnorm_eval: NormStats       # eval mode: running statistics after bn_updates training batches
    running_mean: list
    running_var: list
    batch: int
    features: int
    bn_updates: int
    seed: int

    def to_dict(self) -> dict:
        d = super().to_dict()
        for key in ("input", "layernorm", "batchnorm", "batchnorm_eval"):
            d[key] = _finite_or_none({f.name: getattr(getattr(self, key), f.name) for f in fields(NormStats)})
        return d

    def tables(self) -> list[Table]:
        def summary(name, s: NormStats):
            avg = lambda xs: sum(xs) / len(xs)  # noqa: E731
            return [name, avg([abs(v) for v in s.per_sample_mean]), avg(s.per_sample_std),
                    avg([abs(v) for v in s.per_feature_mean]), avg(s.per_feature_std), s.manual_max_abs_diff]
        t = Table(f"batch {self.batch} × {self.features} features (averages over samples / features)",
                  ["", "|sample mean|", "sample std", "|feature mean|", "feature std", "max |manual - torch|"],
                  [summary("input", self.input), summary("LayerNorm", self.layernorm),
                   summary("BatchNorm (train)", self.batchnorm),
                   summary(f"BatchNorm (eval, {self.bn_updates} updates)", self.batchnorm_eval)])
        notes = Table("notes", ["what", "value"], [["BatchNorm at this batch size",
                                            f"PyTorch raised: {self.batchnorm.error}" if self.batchnorm.error
                                            else "fine (batch statistics)"],
                                           ["running mean (first 4 features)", ", ".join(fmt(v) for v in
                                                                                         self.running_mean[:4])],
                                           ["running var (first 4 features)", ", ".join(fmt(v) for v in
                                                                                        self.running_var[:4])]])
        return [t, notes]


def layer_norm_manual(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Each row to mean 0, std 1 across its features (biased variance, eps inside the sqrt)."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, correction=0)
    return (x - mean) / torch.sqrt(var + eps)


def batch_norm_manual(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Each column to mean 0, std 1 across the batch (train mode: this batch's own statistics)."""
    mean = x.mean(0, keepdim=True)
    var = x.var(0, keepdim=True, correction=0)
    return (x - mean) / torch.sqrt(var + eps)


@_single_threaded
def norm_compare(*, batch=8, features=16, shift=3.0, scale=2.0, feature_spread=2.0, bn_updates=3,
                 seed=0) -> NormCompare:
    """LayerNorm and BatchNorm on one batch: by hand and with torch.nn, train and eval mode."""
    k = _check_knobs(NORM_KNOBS, dict(batch=batch, features=features, shift=shift, scale=scale,
                                      feature_spread=feature_spread, bn_updates=bn_updates, seed=seed))
    B, C = k["batch"], k["features"]
    g = torch.Generator().manual_seed(k["seed"])
    # float64 so the by-hand vs PyTorch comparison is about the formula, not rounding (shift 100, scale 0.01).
    offsets = torch.randn(C, generator=g, dtype=torch.float64) * k["feature_spread"]

    def draw(n):
        return k["shift"] + offsets + k["scale"] * torch.randn(n, C, generator=g, dtype=torch.float64)

    x = draw(B)                                                   # (B, C)
    ln = torch.nn.LayerNorm(C, eps=EPS, dtype=torch.float64)
    bn = torch.nn.BatchNorm1d(C, eps=EPS, momentum=BN_MOMENTUM, dtype=torch.float64).train()

    with torch.no_grad():
        # 1. LayerNorm: per sample, across features.
        y_ln = ln(x)
        ln_stats = NormStats.of(y_ln, manual_max_abs_diff=(y_ln - layer_norm_manual(x)).abs().max().item())
        # 2. BatchNorm, train mode: per feature, across the batch. A batch of one has no spread to use.
        manual = batch_norm_manual(x)
        try:
            y_bn = bn(x)
            bn_stats = NormStats.of(y_bn, manual_max_abs_diff=(y_bn - manual).abs().max().item())
        except ValueError as e:
            bn_stats = NormStats.of(manual, error=str(e))       # the formula's answer: x - mean = 0 everywhere
        # 3. BatchNorm, eval mode: running statistics collected from fresh training batches.
        bn_run = torch.nn.BatchNorm1d(C, eps=EPS, momentum=BN_MOMENTUM, dtype=torch.float64).train()
        r_mean, r_var = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
        for _ in range(k["bn_updates"]):
            xb = draw(WARMUP_BATCH)
            bn_run(xb)
            r_mean = (1 - BN_MOMENTUM) * r_mean + BN_MOMENTUM * xb.mean(0)
            r_var = (1 - BN_MOMENTUM) * r_var + BN_MOMENTUM * xb.var(0, correction=1)  # unbiased, as PyTorch
        y_eval = bn_run.eval()(x)
        eval_manual = (x - r_mean) / torch.sqrt(r_var + EPS)
        eval_stats = NormStats.of(y_eval, manual_max_abs_diff=(y_eval - eval_manual).abs().max().item())

    return NormCompare(input=NormStats.of(x), layernorm=ln_stats, batchnorm=bn_stats, batchnorm_eval=eval_stats,
                       running_mean=bn_run.running_mean.tolist(), running_var=bn_run.running_var.tolist(),
                       batch=B, features=C, bn_updates=k["bn_updates"], seed=k["seed"])
