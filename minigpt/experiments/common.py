"""The Concepts experiments' common ground: the knobs each accepts, checks, result tables, and the
explanations shown under each figure and by the CLI.

Part of the minigpt.experiments package (see its docstring). Torch-free at import (torch is
imported where an experiment runs), so the page lays out the Concepts tab from these knobs and
explanations before torch is loaded. Core module: imports minigpt.limits only (never gradio or
matplotlib).
"""

from __future__ import annotations

import ast
import functools
import math
import threading
from dataclasses import dataclass, fields
from pathlib import Path

from ..limits import check_float, check_int


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


def _entropy(p: torch.Tensor) -> torch.Tensor:
    import torch
    return torch.special.entr(p).sum(-1)  # -sum p log p, with 0 log 0 = 0


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
        import torch
        with _THREADS_LOCK:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return fn(*args, **kwargs)
            finally:
                torch.set_num_threads(before)
    return wrapper


def source_of(module: str, *names: str) -> str:
    """The source of the functions `names` of this package's `module` ("norms"), read from its file
    without importing it: the page shows the formulas by hand before torch is loaded."""
    text = Path(__file__).with_name(f"{module}.py").read_text(encoding="utf-8")
    defs = {n.name: n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)}
    return "\n\n\n".join(ast.get_source_segment(text, defs[name]) for name in names) + "\n"


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
