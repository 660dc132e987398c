"""Figures for the ladder (minigpt/ladder.py) and for "from averaging to attention" (minigpt/averaging.py).

Plain data in, matplotlib `Figure` out, built with the object-oriented API (never pyplot, never
matplotlib.use(): see minigpt/plots.py). The ladder figures take rung dicts, the form both
`RungDone.to_dict()` and the shipped checkpoints/ladder.json use, so a live run and the measured
one are drawn by the same code; a rung still training can be passed with only its name and curve.
"""

from __future__ import annotations

import math

INK, GREY, FLAG, LECTURE = "#27272a", "#a1a1aa", "#f97316", "#18181b"
TITLE, LABEL, TICK = 12, 11, 10
LECTURE_LABEL = "Karpathy's lecture (GPU, 5000 steps, 384 wide)"


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes:
        ax.tick_params(labelsize=TICK)
    return fig, axes


def rung_colours(n: int) -> list:
    """One colour per rung, light to dark along the ladder (the bigram grey)."""
    import matplotlib
    cmap = matplotlib.colormaps["viridis"]
    return [GREY] + [cmap(0.85 - 0.8 * k / max(n - 2, 1)) for k in range(n - 1)]


def _colour_of(rung: dict, colours: list) -> object:
    k = int(rung.get("rung", 1)) - 1
    return colours[min(max(k, 0), len(colours) - 1)]


def ladder_curves_figure(rungs: list[dict], x: str = "iter"):
    """The validation estimate of every rung over training, overlaid (x: "iter" or "seconds")."""
    fig, (ax,) = _figure(7.5, 4.2)
    colours = rung_colours(8)
    col = 1 if x == "seconds" else 0
    drawn = False
    for r in rungs:
        curve = r.get("curve") or []
        if not curve:
            continue
        xs, ys = [p[col] for p in curve], [p[3] for p in curve]
        ax.plot(xs, ys, "-", lw=2.2, color=_colour_of(r, colours), label=f"{r.get('rung', '')} {r['name']}")
        drawn = True
    ax.set_xlabel("training seconds" if x == "seconds" else "step", fontsize=LABEL)
    ax.set_ylabel("validation loss (estimate)", fontsize=LABEL)
    ax.set_title("Each rung's validation loss while it trains", fontsize=TITLE, color=INK)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=9, loc="upper right", ncols=2)
    else:
        ax.text(0.5, 0.5, "no rung has been evaluated yet", ha="center", va="center", transform=ax.transAxes,
                color=GREY, fontsize=LABEL)
    return fig


def ladder_bars_figure(rungs: list[dict], lecture: bool = True):
    """One bar per finished rung: its full-validation loss, the bigram's level dashed, rungs with a
    note (no clear gain over the rung before) hatched in orange; the lecture's numbers as markers."""
    fig, (ax,) = _figure(7.5, 4.4)
    colours = rung_colours(8)
    done = [r for r in rungs if r.get("val_loss") is not None]
    names = [f"{r.get('rung', '')} {r['name']}" for r in done]
    marked = False
    for k, r in enumerate(done):
        flagged = bool(r.get("note"))
        ax.bar(k, r["val_loss"], width=0.7, color=_colour_of(r, colours), edgecolor=FLAG if flagged else "white",
               hatch="//" if flagged else None, linewidth=1.5 if flagged else 0.5)
        ax.text(k, r["val_loss"] + 0.03, f"{r['val_loss']:.3f}" + ("\nno gain" if flagged else ""),
                ha="center", va="bottom", fontsize=9, color=FLAG if flagged else INK)
        if lecture and r.get("lecture") is not None:
            ax.plot(k, r["lecture"], "D", color=LECTURE, ms=5, label=None if marked else LECTURE_LABEL)
            marked = True
    bigram = next((r["val_loss"] for r in done if r["name"] == "bigram"), None)
    if bigram is not None:
        ax.axhline(bigram, ls="--", color=GREY, lw=1.2, label=f"bigram table: {bigram:.3f}")
    ax.set_xticks(range(len(done)), names, rotation=25, ha="right", fontsize=TICK)
    top = max([r["val_loss"] for r in done] + [r["lecture"] for r in done if r.get("lecture")] + [1.0])
    ax.set_ylim(0, top * 1.18)
    ax.set_xlim(-0.6, max(8, len(done)) - 0.4)  # room for all eight rungs while they finish one by one
    ax.set_ylabel("full-validation loss", fontsize=LABEL)
    ax.set_title("What each idea is worth: lower is better", fontsize=TITLE, color=INK)
    ax.grid(True, axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, loc="lower left")
    return fig


# ---- from averaging to attention ------------------------------------------------------------------

def _labels(ax, rows, cols, fontsize):
    from .plots import show_token
    ax.set_yticks(range(len(rows)), [show_token(t) for t in rows], fontsize=fontsize, fontfamily="DejaVu Sans Mono")
    ax.set_xticks(range(len(cols)), [show_token(t) for t in cols], fontsize=fontsize, fontfamily="DejaVu Sans Mono",
                  rotation=90)


def averaging_figure(avg):
    """(a) loop, (b) tril matmul, (c) masked softmax: the running share of each token, three identical
    heatmaps (rows: positions, columns: the text's distinct tokens), each titled with its largest
    difference from the loop."""
    T, K = avg.loop.shape
    fs = max(6.0, min(10.0, 220.0 / max(T, K, 1)))
    fig, axes = _figure(12.5, 4.6 + 0.05 * T, 1, 3)
    titles = ("(a) a loop: mean of x[0..t]", "(b) tril / row sums @ x", "(c) softmax(0, future = −inf) @ x")
    diffs = (0.0, avg.diff_tril, avg.diff_softmax)
    im = None
    for ax, data, title, diff in zip(axes, (avg.loop, avg.tril, avg.softmax), titles, diffs):
        im = ax.imshow(data.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        _labels(ax, avg.tokens, avg.columns, fs)
        ax.set_title(title + ("" if diff == 0.0 and data is avg.loop else f"\nmax |difference from (a)| = {diff:.1e}"),
                     fontsize=LABEL, color=INK)
        ax.set_xlabel("token (one-hot column)", fontsize=LABEL - 1)
    axes[0].set_ylabel("position t (its token)", fontsize=LABEL - 1)
    fig.colorbar(im, ax=axes, shrink=0.7, label="share among tokens 0..t")
    return fig


def attention_vs_average_figure(avg, layer: int = 0, head: int = 0):
    """The uniform weights of (b)/(c) beside the model's real attention (one head) for the same tokens."""
    from .plots import _masked_heatmap
    T = len(avg.tokens)
    fs = max(6.0, min(11.0, 260.0 / max(T, 1)))
    fig, axes = _figure(12.0, 6.0, 1, 2)
    im = _masked_heatmap(axes[0], avg.weights.numpy(), avg.tokens, True, fs)
    axes[0].set_title("averaging: every earlier token weighs 1/(t+1)", fontsize=LABEL, color=INK)
    if avg.attention is None:
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, "this model has no attention\n(the bigram table, or no blocks):\ntrain or load a GPT",
                     ha="center", va="center", transform=axes[1].transAxes, fontsize=LABEL, color=GREY)
    else:
        L, nh = avg.attention.shape[:2]
        if not (0 <= layer < L and 0 <= head < nh):
            raise ValueError(f"the model has {L} layers of {nh} heads: layer 0..{L - 1}, head 0..{nh - 1}")
        w = avg.attention[layer, head]
        im = _masked_heatmap(axes[1], w.numpy(), avg.tokens, True, fs)
        ent = -(w[1:] * w[1:].clamp_min(1e-30).log()).sum(-1).mean() if T > 1 else w.new_zeros(())
        axes[1].set_title(f"the model's attention, layer {layer}, head {head}: weights from q·k/√d\n"
                          f"(mean entropy {float(ent):.2f} nats; uniform would be "
                          f"{_uniform_entropy(T):.2f})", fontsize=LABEL, color=INK)
    for ax in axes:
        ax.set_xlabel("key: the token looked at", fontsize=LABEL - 1)
    axes[0].set_ylabel("query: the token looking", fontsize=LABEL - 1)
    fig.colorbar(im, ax=axes, shrink=0.7)
    return fig


def _uniform_entropy(T: int) -> float:
    """Mean entropy of the uniform causal rows 1..T-1 (row t spreads over t + 1 keys)."""
    return sum(math.log(t + 1) for t in range(1, T)) / max(T - 1, 1)
