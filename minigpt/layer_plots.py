"""Figures of the trainer's per-block diagnostics (minigpt/diagnostics.py), for the Train tab.

Each builder takes the evaluations so far (Eval events, or their `event_dict` form) and returns a
matplotlib Figure: the latest evaluation in bold, earlier ones fading, one point per block. The
gradient plot is the Concepts tab's vanishing-gradient picture, measured in the network being
trained. Nothing here knows about Gradio; see plots.py for why a bare Figure is used.
"""

from __future__ import annotations

from .plots import BLUE, GREY, INK, ORANGE, _figure

HISTORY = 6  # earlier evaluations drawn behind the latest


def _get(ev, key: str):
    return ev[key] if isinstance(ev, dict) else getattr(ev, key)


def _per_layer(ax, evals, key: str, colour: str, log: bool, empty: str):
    """Draw `key` (a per-block list) of the last HISTORY + 1 evaluations; return the latest values."""
    shown = [e for e in evals if _get(e, key)][-(HISTORY + 1):]
    ax.set_xlabel("block (input side → output side)")
    if not shown:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color=INK)
        ax.set_xticks([])
        ax.set_yticks([])
        return []
    positive = [v for e in shown for v in _get(e, key) if v > 0]
    floor = min(positive) / 10 if positive else 1e-30
    for i, ev in enumerate(shown):
        values = list(_get(ev, key))
        layers = list(range(1, len(values) + 1))
        latest = i == len(shown) - 1
        # A gradient that underflowed to exactly 0 cannot sit on a log axis: draw it on the floor, marked.
        drawn = [max(v, floor) for v in values] if log else values
        ax.plot(layers, drawn, marker="o" if latest else None, lw=2.2 if latest else 1.0,
                color=colour if latest else GREY, alpha=1.0 if latest else 0.35 + 0.5 * i / len(shown),
                label=f"step {_get(ev, 'iter')}" if latest or i == 0 else None, zorder=3 if latest else 2)
        if latest and log:
            zeros = [x for x, v in zip(layers, values) if v <= 0]
            if zeros:
                ax.scatter(zeros, [floor] * len(zeros), marker="v", s=60, color=colour, zorder=4,
                           label="exactly 0 (below float precision)")
    if log:
        ax.set_yscale("log")
    ax.set_xticks(range(1, len(_get(shown[-1], key)) + 1))
    ax.grid(alpha=0.3, which="both" if log else "major")
    ax.legend(fontsize=8, loc="best")
    return list(_get(shown[-1], key))


def layer_grad_figure(evals, width: float = 6.0, height: float = 3.4):
    """Gradient norm of each block's weights on a log axis (latest evaluation bold), with the
    first/last ratio in the title: near 1 in a healthy GPT, many orders of magnitude below when
    gradients vanish (sigmoid, no residual, no norm)."""
    fig = _figure(width, height)
    ax = fig.add_subplot()
    latest = _per_layer(ax, evals, "layer_grad_norms", BLUE, True,
                        "no per-layer gradients yet (they come with each evaluation; the bigram has no blocks)")
    title = "gradient norm per block"
    if len(latest) >= 2 and latest[-1] > 0:
        title += f"  (first / last = {latest[0] / latest[-1]:.2g})"
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("‖grad‖ of the block's weights")
    return fig


def layer_act_figure(evals, width: float = 6.0, height: float = 3.4):
    """Standard deviation of the residual stream after each block (latest evaluation bold), on a
    log axis: it grows slowly with depth in a pre-norm GPT, and collapses or explodes without
    norms or residual connections."""
    fig = _figure(width, height)
    ax = fig.add_subplot()
    _per_layer(ax, evals, "layer_act_std", ORANGE, True,
               "no activation statistics yet (they come with each evaluation; the bigram has no blocks)")
    ax.set_title("activation spread per block", fontsize=10)
    ax.set_ylabel("std of the residual stream")
    return fig
