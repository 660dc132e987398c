"""Concepts experiments: small numerical demos of why attention and deep nets are built as they are.

1. `softmax_scaling`: why attention divides q·k by sqrt(d) before the softmax.
2. `gradient_flow`: vanishing gradients in a deep MLP, and exploding ones tamed by clip_grad_norm_.
3. `norm_compare`: LayerNorm normalises each sample, BatchNorm each feature (and fails at batch 1).

Each function takes keyword arguments checked against the `Knob`s below (a ValueError names the
bad one), draws its random numbers from a local `torch.Generator(seed)` so a seed always gives the
same numbers, and returns a dataclass of plain numbers. `to_dict()` is JSON-ready; `tables()` is
what the CLI prints and the Concepts tab shows. Figures are drawn in experiment_plots.py.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .limits import check_float, check_int

# ---- knobs: the one place that says what each experiment accepts ----------------------------------


@dataclass(frozen=True)
class Knob:
    """A numeric setting: its inclusive range, its default, and a line of help (CLI and UI read these)."""
    lo: float
    hi: float
    default: float
    help: str
    integer: bool = True

    def check(self, name: str, value):
        if self.integer:
            return check_int(name, value, int(self.lo), int(self.hi))
        return check_float(name, value, self.lo, self.hi)


SEED = Knob(0, 2**31 - 1, 0, "random seed (the same seed gives the same numbers)")

SOFTMAX_KNOBS = {
    "seq_len": Knob(2, 512, 64, "T: scores in one softmax row (one query against T keys)"),
    "rows": Knob(1, 1024, 256, "softmax rows (queries) the max-prob and entropy are averaged over"),
    "pairs": Knob(100, 20_000, 4000, "random (q, k) pairs per d for the score variance"),
    "example_scale": Knob(0.1, 32.0, 8.0, "factor the example logits are multiplied by", integer=False),
    "seed": SEED,
}
DIM = Knob(1, 1024, 64, "a head dimension d")
DIM_CHOICES = tuple(2**i for i in range(11))          # 1, 2, 4, ..., 1024
DEFAULT_DIMS = DIM_CHOICES[1:]                        # 2 ... 1024, as in the issue
MAX_DIMS = 16
EXAMPLE_LOGITS = (0.1, -0.2, 0.3, -0.2, 0.5)          # the notebook's row, before and after ×8
EXAMPLE_LEN = (2, 32)
EXAMPLE_ABS_MAX = 100.0

ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu")
INITS = {  # name -> how each weight is drawn (fan_in = width; the layers are square and have no bias)
    "default": "PyTorch's nn.Linear default, U(-1/sqrt(width), 1/sqrt(width))",
    "xavier": "Xavier/Glorot normal, N(0, 1/width): keeps the variance for tanh-like layers",
    "kaiming": "Kaiming/He normal, N(0, 2/width): keeps the variance for ReLU layers",
    "small": "N(0, 0.01^2) whatever the width",
    "large": "N(0, 1) whatever the width",
}
GRADIENT_KNOBS = {
    "depth": Knob(1, 50, 20, "layers (Linear + activation) in the MLP"),
    "width": Knob(2, 256, 32, "units per layer"),
    "batch": Knob(1, 256, 64, "rows in the fixed random batch"),
    "explode_gain": Knob(0.5, 4.0, 1.5, "clipping demo: weight std in units of 1/sqrt(width) "
                                        "(1 keeps the signal size, above 1 it grows layer by layer)", integer=False),
    "max_norm": Knob(0.01, 100.0, 1.0, "clipping demo: max_norm given to clip_grad_norm_", integer=False),
    "lr": Knob(1e-4, 1.0, 0.05, "clipping demo: SGD learning rate", integer=False),
    "sgd_steps": Knob(1, 50, 10, "clipping demo: SGD steps with and without clipping"),
    "seed": SEED,
}
DEFAULT_ACTIVATIONS = ("sigmoid", "relu")

NORM_KNOBS = {
    "batch": Knob(1, 256, 8, "samples in the batch (try 1)"),
    "features": Knob(2, 256, 16, "features per sample"),
    "shift": Knob(-100.0, 100.0, 3.0, "mean of the raw activations", integer=False),
    "scale": Knob(0.01, 100.0, 2.0, "std of the raw activations", integer=False),
    "feature_spread": Knob(0.0, 100.0, 2.0, "std of a fixed offset per feature (features on different scales)",
                           integer=False),
    "bn_updates": Knob(0, 500, 3, "training batches BatchNorm sees before eval mode (running statistics)"),
    "seed": SEED,
}
EPS = 1e-5             # nn.LayerNorm and nn.BatchNorm1d's default
BN_MOMENTUM = 0.1      # nn.BatchNorm1d's default: running = (1 - m) * running + m * batch statistic
WARMUP_BATCH = 32      # rows in each training batch that updates BatchNorm's running statistics


def defaults(knobs: dict) -> dict:
    return {name: knob.default for name, knob in knobs.items()}


def parse_floats(text, name: str) -> list[float]:
    """'0.1, -0.2, 0.3' (or a sequence) -> floats; a ValueError names the setting."""
    parts = [p for p in text.replace(",", " ").split()] if isinstance(text, str) else list(text)
    if not parts:
        raise ValueError(f"{name} must list at least one number")
    return [check_float(name, p, -math.inf, math.inf) for p in parts]


def parse_names(text, name: str) -> list[str]:
    """'sigmoid,relu' (or a sequence) -> ['sigmoid', 'relu']."""
    parts = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    return [str(p).strip().lower() for p in parts]


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _check_knobs(knobs: dict, values: dict) -> dict:
    return {name: knobs[name].check(name, value) for name, value in values.items()}


def _finite_or_none(x):
    """JSON has no inf/nan: they become null (the plots still get the real floats)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x


_THREADS_LOCK = threading.Lock()


def _single_threaded(fn):
    """Run an experiment on one intra-op thread, then put the thread count back.

    These tensors are tiny: handing them to a second thread costs more than it saves, and on a busy
    2-core machine (a training run next door) waiting for a descheduled OpenMP thread turned a 50 ms
    experiment into 10-20 s. The setting belongs to the calling thread, but a thread that starts using
    torch meanwhile copies the last value set, so two experiments at once could restore each other's
    value: hence the lock, held for the few milliseconds an experiment takes.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _THREADS_LOCK:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return fn(*args, **kwargs)
            finally:
                torch.set_num_threads(before)
    return wrapper


class _Result:
    def to_dict(self) -> dict:
        return {f.name: _finite_or_none(getattr(self, f.name)) for f in fields(self)}


@dataclass
class Table:
    """Numbers for the CLI and the page: a title, column names and rows of str/float/int/None."""
    title: str
    headers: list
    rows: list


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or isinstance(v, (int, str)):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}" if v == 0 or 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"


def tables_text(tables: list[Table]) -> str:
    """Aligned plain-text tables (the CLI's output)."""
    out = []
    for t in tables:
        cells = [[str(h) for h in t.headers]] + [[fmt(v) for v in row] for row in t.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(t.headers))]
        out.append(t.title)
        for j, r in enumerate(cells):
            out.append("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
            if j == 0:
                out.append("  " + "  ".join("-" * w for w in widths))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def tables_markdown(tables: list[Table]) -> str:
    def row(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    out = []
    for t in tables:
        out += [f"**{t.title}**", "", row(map(str, t.headers)), "|" + "---|" * len(t.headers)]
        out += [row(fmt(v) for v in r) for r in t.rows]
        out.append("")
    return "\n".join(out)


# ---- what to look for (shown under each plot and by the CLI) ----------------------------------------

EXPLANATIONS = {
    "softmax_variance": (
        "An attention score is a dot product q·k of two d-dimensional vectors, a sum of d random terms, so "
        "its variance grows like d (the line of slope 1). Dividing by sqrt(d) divides the variance by d, "
        "so the scaled scores keep a variance near 1 whatever the head size."),
    "softmax_peakiness": (
        "Feed those scores to softmax over T keys. Unscaled, larger d means larger gaps between scores, so "
        "the top key takes almost all the weight (max prob → 1) and the entropy falls towards 0 nats: the "
        "query attends to one token and the gradients through the other weights vanish. Scaled, both "
        "curves stay flat, well below the uniform entropy log T."),
    "softmax_example": (
        "The same five logits, as they are and multiplied by a factor. Softmax only looks at differences "
        "between logits, so multiplying them by 8 stretches every gap eightfold: the largest logit now "
        "grabs most of the probability. That is what an unscaled score with d = 64 does (sqrt(64) = 8)."),
    "gradient_flow": (
        "One backward pass through a deep MLP: the size of the gradient on each layer's weights, input "
        "layer on the left. Each layer multiplies the backward signal by its weights and the activation's "
        "slope; sigmoid's slope is at most 0.25, so the early layers get a gradient many orders of "
        "magnitude smaller and barely learn. ReLU with Kaiming init, residual connections or LayerNorm "
        "keep the line level."),
    "gradient_clipping": (
        "A deep linear stack whose weights are a bit too large: the gradient norm is huge, and one plain "
        "SGD step overshoots so far that the loss shoots up and becomes inf/nan. clip_grad_norm_ rescales "
        "the whole gradient to at most max_norm (left), so every step is bounded and the loss stays "
        "finite and comes down (right). Clipping treats the symptom; a sensible init treats the cause."),
    "norm_heatmaps": (
        "Rows are samples, columns are features. LayerNorm rescales each row to mean 0 and std 1, so "
        "features keep their offsets relative to each other; BatchNorm (train mode) rescales each column "
        "over the batch, so samples keep theirs. In eval mode BatchNorm uses running averages from "
        "training batches instead, which are only right after enough updates. At batch size 1 a column "
        "has one value and BatchNorm has nothing to normalise with."),
    "norm_stats": (
        "The same facts as numbers: after LayerNorm every per-sample mean is 0 and std 1 (the features can "
        "still differ); after BatchNorm every per-feature mean is 0 and std 1 (the samples can still "
        "differ). A transformer uses LayerNorm because it works for any batch size and the same way in "
        "training and generation."),
    "model_scores": (
        "The same question inside the current model: for each layer, the spread of the real q·k scores "
        "of every head over your text, as they are and divided by sqrt(d) as the model does (left), and "
        "how spread out its attention is (right): the entropy the model actually has, and what it would "
        "be without the division. Without it every score is sqrt(d) times larger, softmax grows peakier "
        "and each query attends to fewer tokens; the dotted line is a uniform row."),
}


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


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return torch.special.entr(p).sum(-1)  # -sum p log p, with 0 log 0 = 0


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


# ---- 4. attention scores inside a model ----------------------------------------------------------------

@dataclass
class ModelScores(_Result):
    tokens: int                     # positions looked at (the text's last block_size tokens)
    head_dim: int                   # d = n_embd / n_head
    layers: list                    # 0 .. n_layer - 1
    score_std_unscaled: list        # std of q·k over every head's causal (query, key) pairs
    score_std_scaled: list          # std of q·k / sqrt(d): what the model gives softmax
    max_prob_scaled: list           # mean over rows (with 2+ keys) of the largest attention weight
    max_prob_unscaled: list         # the same if the model skipped the 1/sqrt(d)
    entropy_scaled: list            # mean attention entropy per row, nats
    entropy_unscaled: list
    uniform_entropy: float          # mean log(keys) over the same rows: every key equally weighted

    def tables(self) -> list[Table]:
        rows = [list(r) for r in zip(self.layers, self.score_std_unscaled, self.score_std_scaled,
                                     self.max_prob_unscaled, self.max_prob_scaled, self.entropy_unscaled,
                                     self.entropy_scaled)]
        return [Table(f"attention scores of the model over {self.tokens} tokens (d = {self.head_dim}, sqrt(d) = "
                      f"{fmt(math.sqrt(self.head_dim))}; a uniform row's entropy: {fmt(self.uniform_entropy)} nats)",
                      ["layer", "std q·k", "std q·k/√d", "max p (no √d)", "max p", "entropy (no √d)", "entropy"],
                      rows)]


def attention_scores(model, ids) -> list[torch.Tensor]:
    """The raw scores q·kᵀ (n_head, T, T) of every layer for one sequence, read from each block's
    q/k projection with forward hooks (the model itself is not changed). Causal: use the lower triangle."""
    from .model import GPT
    if not isinstance(model, GPT):
        raise ValueError("the bigram model has no attention: each token looks only at itself. Train or load a GPT")
    cfg = model.config
    ids = list(ids)[-cfg.block_size:]
    if len(ids) < 2:
        raise ValueError("enter at least two tokens of text")
    hs = cfg.n_embd // cfg.n_head
    qkv = []
    hooks = [block.attn.c_attn.register_forward_hook(lambda _m, _i, out: qkv.append(out.detach()))
             for block in model.transformer.h]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    scores = []
    for out in qkv:
        q, k, _ = out[0].float().cpu().split(cfg.n_embd, dim=-1)        # (T, C) each
        q = q.view(len(ids), cfg.n_head, hs).transpose(0, 1)             # (nh, T, hs)
        k = k.view(len(ids), cfg.n_head, hs).transpose(0, 1)
        scores.append(q @ k.transpose(-2, -1))                           # (nh, T, T)
    return scores


@_single_threaded
def model_scores(model, ids) -> ModelScores:
    """Experiment 4: how big the real pre-softmax scores are in each layer, and what softmax would do
    with them without the 1/sqrt(d) (the model's own attention uses the scaled ones)."""
    scores = attention_scores(model, ids)
    T = scores[0].size(-1)
    hs = model.config.n_embd // model.config.n_head
    causal = torch.ones(T, T).tril().bool()
    rows = slice(1, T)                                                   # rows with at least two keys
    out = {k: [] for k in ("std_u", "std_s", "max_s", "max_u", "ent_s", "ent_u")}
    for raw in scores:
        values = raw[:, causal]
        out["std_u"].append(values.std().item())
        out["std_s"].append((values / math.sqrt(hs)).std().item())
        for key, logits in (("s", raw / math.sqrt(hs)), ("u", raw)):
            p = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)[:, rows]
            out["max_" + key].append(p.max(-1).values.mean().item())
            out["ent_" + key].append(_entropy(p).mean().item())
    uniform = torch.log(torch.arange(2, T + 1, dtype=torch.float64)).mean().item()
    return ModelScores(tokens=T, head_dim=hs, layers=list(range(len(scores))), score_std_unscaled=out["std_u"],
                       score_std_scaled=out["std_s"], max_prob_scaled=out["max_s"], max_prob_unscaled=out["max_u"],
                       entropy_scaled=out["ent_s"], entropy_unscaled=out["ent_u"], uniform_entropy=uniform)
