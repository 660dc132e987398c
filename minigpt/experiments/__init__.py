"""Concepts experiments: small numerical demos of why attention and deep nets are built as they are.

1. `softmax_scaling`: why attention divides q·k by sqrt(d) before the softmax.
2. `gradient_flow`: vanishing gradients in a deep MLP, and exploding ones tamed by clip_grad_norm_.
3. `norm_compare`: LayerNorm normalises each sample, BatchNorm each feature (and fails at batch 1).
4. `model_scores`: the real q·k scores of a trained model per layer, with and without 1/sqrt(d).

Each function takes keyword arguments checked against the `Knob`s below (a ValueError names the
bad one), draws its random numbers from a local `torch.Generator(seed)` so a seed always gives the
same numbers, and returns a dataclass of plain numbers. `to_dict()` is JSON-ready; `tables()` is
what the CLI prints and the Concepts tab shows. Figures are drawn in experiment_plots.py.

One module per experiment (softmax, gradients, norms, scores) and `common` (knobs, tables,
explanations); everything is importable from here as before. `common` loads with the package;
the four experiment modules (and torch) load on first use of one of their names, so the page can
read the knobs and explanations before torch is loaded. Core package: imports torch and
minigpt.limits only (never gradio or matplotlib).
"""

from __future__ import annotations

from .common import (  # noqa: F401
    Knob, SEED, SOFTMAX_KNOBS, DIM, DIM_CHOICES, DEFAULT_DIMS, MAX_DIMS, EXAMPLE_LOGITS, EXAMPLE_LEN,
    EXAMPLE_ABS_MAX, ACTIVATIONS, INITS, GRADIENT_KNOBS, DEFAULT_ACTIVATIONS, NORM_KNOBS, EPS, BN_MOMENTUM,
    WARMUP_BATCH, defaults, parse_floats, parse_names, Table, fmt, tables_text, tables_markdown, EXPLANATIONS,
    source_of)

_LAZY = {  # name -> the module that defines it (imported on first use: it imports torch)
    **dict.fromkeys(("SoftmaxScaling", "softmax_scaling"), "softmax"),
    **dict.fromkeys(("GradientFlow", "gradient_flow"), "gradients"),
    **dict.fromkeys(("NormStats", "NormCompare", "layer_norm_manual", "batch_norm_manual", "norm_compare"), "norms"),
    **dict.fromkeys(("ModelScores", "attention_scores", "model_scores"), "scores"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
