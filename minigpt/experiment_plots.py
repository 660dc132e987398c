"""Figures for the Concepts experiments (minigpt/experiments/): numbers in, matplotlib Figure out.

Built with the object-oriented API (`matplotlib.figure.Figure`), never pyplot, because the app
draws them in worker threads and pyplot's figure registry is not thread-safe. Every value drawn
comes from the result object; the reference lines (d, 1, 1/T, log T) are computed from its settings.
"""

from __future__ import annotations

import math

UNSCALED, SCALED, REF = "#dc2626", "#4f46e5", "#71717a"
LAYER_NORM, BATCH_NORM = "#4f46e5", "#f97316"
ACT_COLOURS = {"sigmoid": "#dc2626", "tanh": "#f59e0b", "relu": "#4f46e5", "gelu": "#059669"}
TITLE, LABEL, TICK = 12, 11, 10


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **share):
    from matplotlib.figure import Figure  # no matplotlib.use(): see minigpt/plots.py
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **share).ravel().tolist()
    for ax in axes:
        ax.tick_params(labelsize=TICK)
        ax.grid(True, alpha=0.3, which="major")
    return fig, axes


def _positive(values):
    """Log axes cannot show 0, inf or nan: leave a gap instead."""
    return [v if v is not None and math.isfinite(v) and v > 0 else math.nan for v in values]


def _dims_axis(ax, dims):
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.minorticks_off()
    ax.set_xlabel("head dimension d", fontsize=LABEL)


# ---- 1. softmax scaling -----------------------------------------------------------------------------

def softmax_variance_figure(r):
    fig, (ax,) = _figure(6.5, 3.8)
    ax.plot(r.dims, r.score_var_unscaled, "o-", color=UNSCALED, lw=2.5, label="q·k (unscaled)")
    ax.plot(r.dims, r.score_var_scaled, "o-", color=SCALED, lw=2.5, label="q·k / √d (scaled)")
    ax.plot(r.dims, r.dims, "--", color="black", lw=1.2, label="theory: d and 1")
    ax.plot(r.dims, [1.0] * len(r.dims), "--", color="black", lw=1.2)
    ax.set_yscale("log")
    _dims_axis(ax, r.dims)
    ax.set_ylabel("variance of the scores", fontsize=LABEL)
    ax.set_title(f"Score variance vs d ({r.pairs:,} random q, k pairs each)", fontsize=TITLE)
    ax.legend(fontsize=TICK, loc="upper left")
    return fig


def softmax_peakiness_figure(r):
    fig, (left, right) = _figure(10, 3.8, 1, 2)
    panels = ((left, r.max_prob_unscaled, r.max_prob_scaled, r.uniform_max_prob,
               f"uniform 1/T = {r.uniform_max_prob:.3g}", "largest probability in a row"),
              (right, r.entropy_unscaled, r.entropy_scaled, r.uniform_entropy,
               f"uniform log T = {r.uniform_entropy:.2f}", "entropy (nats)"))
    for ax, unscaled, scaled, ref, ref_label, ylabel in panels:
        ax.plot(r.dims, unscaled, "o-", color=UNSCALED, lw=2, label="softmax(q·k)")
        ax.plot(r.dims, scaled, "o-", color=SCALED, lw=2, label="softmax(q·k / √d)")
        ax.axhline(ref, ls=":", color=REF, lw=1.5, label=ref_label)
        _dims_axis(ax, r.dims)
        ax.set_ylabel(ylabel, fontsize=LABEL)
    left.set_ylim(0, 1.02)
    right.set_ylim(0, r.uniform_entropy * 1.08)
    left.set_title(f"Max probability (mean of {r.rows} rows, T = {r.seq_len})", fontsize=TITLE)
    right.set_title("Entropy of a softmax row", fontsize=TITLE)
    left.legend(fontsize=TICK, loc="upper left")
    right.legend(fontsize=TICK, loc="center right")
    return fig


def softmax_example_figure(r):
    fig, (ax,) = _figure(6.5, 3.8)
    n, w = len(r.example_logits), 0.4
    xs = list(range(n))
    s = f"{r.example_scale:g}"
    b1 = ax.bar([x - w / 2 for x in xs], r.example_probs, w, color=SCALED,
                label=f"softmax(z): entropy {r.example_entropy:.2f} nats")
    b2 = ax.bar([x + w / 2 for x in xs], r.example_probs_scaled, w, color=UNSCALED,
                label=f"softmax({s}·z): entropy {r.example_entropy_scaled:.2f} nats")
    if n <= 12:
        for bars in (b1, b2):
            ax.bar_label(bars, fmt="%.2f", fontsize=TICK - 1, padding=1)
    ax.set_xticks(xs, [f"{z:g}" for z in r.example_logits])
    ax.set_xlabel("logit z", fontsize=LABEL)
    ax.set_ylabel("probability", fontsize=LABEL)
    ax.set_ylim(0, 1.1)
    ax.set_title(f"One row of logits at scale 1 vs scale {s}", fontsize=TITLE)
    ax.legend(fontsize=TICK, loc="upper left")
    return fig


# ---- 2. gradients -----------------------------------------------------------------------------------

def gradient_flow_figure(r):
    fig, (ax,) = _figure(7.5, 4)
    for act, norms in r.grad_norms.items():
        ratio = r.first_last_ratio[act]
        label = f"{act} (first/last {ratio:.1e})" if ratio is not None and math.isfinite(ratio) else act
        ax.plot(r.layers, _positive(norms), "o-", ms=3.5, lw=2, color=ACT_COLOURS.get(act), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("layer (1 = next to the input)", fontsize=LABEL)
    ax.set_ylabel("‖dLoss/dW‖ (log scale)", fontsize=LABEL)
    extras = ", ".join(x for x, on in (("residual", r.residual), ("LayerNorm", r.layernorm)) if on)
    ax.set_title(f"Gradient norm per layer: depth {r.depth}, width {r.width}, init {r.init}"
                 f"{', ' + extras if extras else ''}", fontsize=TITLE)
    if r.depth <= 25:
        ax.set_xticks(r.layers)
    ax.legend(fontsize=TICK)
    return fig


def gradient_clipping_figure(r):
    fig, (left, right) = _figure(10, 3.8, 1, 2)
    bars = left.bar(["before clipping", "after clipping"], _positive([r.total_norm_before, r.total_norm_after]),
                    color=[UNSCALED, SCALED], width=0.55)
    left.bar_label(bars, labels=[f"{r.total_norm_before:.3g}", f"{r.total_norm_after:.3g}"], fontsize=TICK)
    left.axhline(r.max_norm, ls="--", color=REF, label=f"max_norm = {r.max_norm:g}")
    left.set_yscale("log")
    left.set_ylabel("total gradient norm", fontsize=LABEL)
    left.set_title("First step: clip_grad_norm_", fontsize=TITLE)
    left.legend(fontsize=TICK, loc="upper right")
    left.margins(y=0.25)

    # Keep the clipped run readable: values far above it are drawn at the top edge and labelled.
    steps = list(range(len(r.loss_unclipped)))
    seen = _positive([r.loss_unclipped[0], *r.loss_clipped])
    seen = [v for v in seen if not math.isnan(v)] or [1.0]
    top, bottom = max(seen) * 1e3, min(seen) / 10
    plain = [min(v, top) for v in r.loss_unclipped]
    right.plot(steps, _positive(plain), "o-", color=UNSCALED, lw=2, label="SGD, no clipping", clip_on=False)
    right.plot(steps, _positive(r.loss_clipped), "o-", color=SCALED, lw=2, label=f"SGD, clipped to {r.max_norm:g}")
    last = max((i for i, v in enumerate(r.loss_unclipped) if math.isfinite(v)), default=None)
    for i, v in enumerate(r.loss_unclipped):
        if not math.isfinite(v) or (v <= top and not (i == last and r.diverged_at is not None)):
            continue
        text = f"{v:.1e} ↑ (off the chart)" if v > top else f"{v:.2g}"
        if i == last and r.diverged_at is not None:
            text += "\nthen inf/nan"
        right.annotate(text, (i, min(v, top)), xytext=(8, -6), textcoords="offset points", color=UNSCALED,
                       fontsize=TICK, va="top")
    right.set_ylim(bottom, top)
    right.set_yscale("log")
    right.set_xlabel("SGD step", fontsize=LABEL)
    right.set_ylabel("loss (log scale)", fontsize=LABEL)
    right.set_title(f"Loss, lr {r.lr:g}, init gain {r.explode_gain:g}", fontsize=TITLE)
    right.legend(fontsize=TICK, loc="center right")
    return fig


# ---- 3. LayerNorm vs BatchNorm ----------------------------------------------------------------------

def norm_heatmaps_figure(r):
    from matplotlib.ticker import MaxNLocator
    fig, axes = _figure(10, 3.9, 1, 4, sharey=True)
    panels = [("input", r.input), ("LayerNorm", r.layernorm), ("BatchNorm (train)", r.batchnorm),
              (f"BatchNorm (eval, {r.bn_updates} upd.)", r.batchnorm_eval)]
    image = None
    for i, (ax, (name, s)) in enumerate(zip(axes, panels)):
        ax.grid(False)
        if i == 0:
            im0 = ax.imshow(s.values, aspect="auto", cmap="viridis", interpolation="nearest")
            fig.colorbar(im0, ax=ax, shrink=0.85)
        else:
            image = ax.imshow(s.values, aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3, interpolation="nearest")
        ax.set_title(name, fontsize=TITLE - 1)
        ax.set_xlabel("feature", fontsize=LABEL)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        if s.error:
            ax.text(0.5, 0.5, "PyTorch refuses:\nbatch of 1\n(the formula\ngives all zeros)", transform=ax.transAxes,
                    ha="center", va="center", fontsize=TICK, bbox=dict(facecolor="white", alpha=0.85))
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("sample", fontsize=LABEL)
    fig.colorbar(image, ax=axes[1:], shrink=0.85, label="normalised value")
    return fig


def norm_stats_figure(r):
    fig, axes = _figure(10, 4.6, 2, 2)
    for row, (axis, n) in enumerate((("sample", r.batch), ("feature", r.features))):
        for col, stat in enumerate(("mean", "std")):
            ax = axes[2 * row + col]
            key = f"per_{axis}_{stat}"
            ln, bn = getattr(r.layernorm, key), getattr(r.batchnorm, key)
            xs, w = list(range(n)), 0.4
            ax.bar([x - w / 2 for x in xs], ln, w, color=LAYER_NORM, label="after LayerNorm")
            ax.bar([x + w / 2 for x in xs], bn, w, color=BATCH_NORM,
                   label="after BatchNorm (train)" + (": PyTorch refused, the formula's zeros" if r.batchnorm.error
                                                      else ""))
            ax.axhline(0.0 if stat == "mean" else 1.0, color=REF, ls="--", lw=1)
            biggest = max(abs(v) for v in ln + bn)
            if stat == "mean":   # at least ±0.25, so 1e-17 of rounding does not fill the panel
                lim = max(0.25, biggest * 1.15)
                ax.set_ylim(-lim, lim)
            else:
                ax.set_ylim(0, max(1.2, biggest * 1.1))
            ax.set_title(f"per-{axis} {stat} (across {'features' if axis == 'sample' else 'the batch'})",
                         fontsize=TITLE - 1)
            ax.set_xlabel(axis, fontsize=LABEL - 1)
            if n <= 20:
                ax.set_xticks(xs)
    if r.batch == 1:
        axes[3].text(0.5, 0.5, "one sample: every feature's std is 0", transform=axes[3].transAxes, ha="center",
                     fontsize=LABEL, color=REF)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=2, fontsize=TICK)
    return fig


# ---- 4. attention scores inside a model ---------------------------------------------------------------

def model_scores_figure(r):
    fig, (left, right) = _figure(10, 3.8, 1, 2)
    xs, w = list(r.layers), 0.38
    left.bar([x - w / 2 for x in xs], r.score_std_unscaled, w, color=UNSCALED, label="q·k")
    left.bar([x + w / 2 for x in xs], r.score_std_scaled, w, color=SCALED, label=f"q·k / √d (÷{r.head_dim ** 0.5:.3g})")
    left.set_ylabel("std of the scores", fontsize=LABEL)
    left.set_title(f"Score spread per layer (d = {r.head_dim}, {r.tokens} tokens)", fontsize=TITLE)
    right.plot(xs, r.entropy_unscaled, "o-", color=UNSCALED, lw=2, label="softmax(q·k): without √d")
    right.plot(xs, r.entropy_scaled, "o-", color=SCALED, lw=2, label="softmax(q·k / √d): the model")
    right.axhline(r.uniform_entropy, ls=":", color=REF, lw=1.5, label=f"uniform: {r.uniform_entropy:.2f}")
    right.set_ylim(0, r.uniform_entropy * 1.1)
    right.set_ylabel("entropy of a row (nats)", fontsize=LABEL)
    right.set_title("How spread out attention is", fontsize=TITLE)
    for ax in (left, right):
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("layer", fontsize=LABEL)
        ax.legend(fontsize=TICK, loc="upper center" if ax is left else "best")
    return fig


FIGURES = {  # experiment -> (explanation key, figure builder), in the order the page shows them
    "softmax": (("softmax_variance", softmax_variance_figure), ("softmax_peakiness", softmax_peakiness_figure),
                ("softmax_example", softmax_example_figure)),
    "gradients": (("gradient_flow", gradient_flow_figure), ("gradient_clipping", gradient_clipping_figure)),
    "norms": (("norm_heatmaps", norm_heatmaps_figure), ("norm_stats", norm_stats_figure)),
}
