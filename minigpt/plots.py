"""What the playground draws: matplotlib figures (OO `Figure` API, Agg) and small HTML views.

Every builder takes plain data (from minigpt/session.py) and returns a Figure, a pandas
DataFrame or an HTML string; nothing here knows about Gradio. matplotlib is imported on first
use so that starting the app stays fast. All user text is escaped before it reaches HTML.
"""

from __future__ import annotations

import html
import math

BLUE, ORANGE, GREY, INK = "#4f46e5", "#f97316", "#d4d4d8", "#27272a"
OPTIMIZER_NAMES = {"adamw": "AdamW", "muon": "Muon"}
# The previous run's validation curve, named by its optimizer: every name is known up front because the
# chart fixes its colours (and which series it draws) from the first data it gets.
GHOST_COLOURS = {f"previous run: {name}, val": colour for name, colour in (("AdamW", "#a1a1aa"), ("Muon", "#c4b5fd"))}
LOSS_COLOURS = {"train (batch)": "#93c5fd", "train": "#1d4ed8", "val": "#ea580c", **GHOST_COLOURS}
TEMP_COLOURS = {0.5: "#1e3a8a", 1.0: "#6366f1", 2.0: "#c4b5fd"}
CHUNK_COLOURS = ("#dbeafe", "#fce7f3", "#dcfce7", "#fef3c7", "#ede9fe", "#ffedd5")


def _figure(width: float, height: float):
    # A bare Figure needs no backend: savefig picks Agg's canvas for png/webp. Never matplotlib.use()
    # here: in a server it can meet pyplot half-imported by another thread (Gradio imports it lazily).
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def show_token(piece: str) -> str:
    """A token's text with its whitespace made visible (for axis labels and chips)."""
    return (piece.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣")) or "∅"


def fmt_time(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def fmt_count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e4 else f"{n:,.0f}"


# ---- training -------------------------------------------------------------------------------------

def ghost_series(optimizer: str) -> str:
    return f"previous run: {OPTIMIZER_NAMES.get(optimizer, optimizer)}, val"


def loss_frame(steps, evals, ghost=(), ghost_optimizer: str = ""):
    """Long-form DataFrame (step, loss, series) for gr.LinePlot: batch losses and the eval estimates,
    and `ghost`, the previous run's (iter, val) curve, named by its optimizer.

    None when there is nothing yet. Every series is always present (a NaN row until it has data):
    the chart fixes its colour legend from the first data it gets, so a series added later would
    never be drawn.
    """
    import pandas as pd
    rows = [(it, loss, "train (batch)") for it, loss in steps if math.isfinite(loss)]
    for it, train, val in evals:
        rows.append((it, train, "train"))
        rows.append((it, val, "val"))
    if ghost:
        name = ghost_series(ghost_optimizer)
        rows += [(it, val, name) for it, val in ghost]
    if not rows:
        return None
    first = rows[0][0]
    present = {r[2] for r in rows}
    rows += [(first, float("nan"), name) for name in LOSS_COLOURS if name not in present]
    return pd.DataFrame(rows, columns=["step", "loss", "series"])


def status_html(view) -> str:
    """Progress bar and numbers of a training run (a TrainView)."""
    if view.state == "idle":
        words = html.escape(view.message) if view.message else \
            "No training in this session yet: choose the knobs and press <b>Start</b>."
        return f'<div class="mg-status"><div class="mg-bar"><div style="width:0%"></div></div><p>{words}</p></div>'
    if view.state == "waiting":  # the message says the place in the queue and the estimated wait
        return ('<div class="mg-status"><div class="mg-bar"><div style="width:0%"></div></div>'
                f'<p><b>{html.escape(view.message)}</b> Generation and the other tabs work meanwhile; '
                f'<b>Stop</b> leaves the queue.</p></div>')
    pct = max(0.0, min(1.0, view.progress)) * 100
    val = f"{view.val_loss:.3f}" if view.val_loss is not None else "–"
    loss = f"{view.loss:.3f}" if view.loss is not None else "–"
    if view.state == "done":
        reasons = {"max_iters": "reached the iteration budget", "max_seconds": "used the time budget",
                   "target": "reached the target loss", "stopped": "stopped", "diverged": "diverged"}
        final = f"{view.final_val_loss:.4f}" if view.final_val_loss is not None else "n/a"
        head = (f"<b>Finished</b> ({reasons.get(view.reason, view.reason)}) after <b>{view.iter:,}</b> iterations · "
                f"full validation loss <b>{final}</b> · {view.tokens_per_s / 1000:.1f} k tokens/s")
    elif view.state in ("stopped", "stopping"):
        when = (f"<b>Stopped</b> at iteration <b>{view.iter:,}</b>" if view.state == "stopped" else
                f"<b>Stopping</b> after the step in progress (iteration <b>{view.iter + 1:,}</b> at most)")
        head = (f"{when} · the model is kept · loss <b>{loss}</b> · val <b>{val}</b> · "
                f"measuring the full validation loss…")
    else:
        head = (f"iteration <b>{view.iter:,}</b> · loss <b>{loss}</b> · val <b>{val}</b> · "
                f"<b>{view.tokens_per_s / 1000:.1f} k</b> tokens/s · {fmt_time(view.elapsed)} elapsed · "
                f"ETA <b>{fmt_time(view.eta)}</b>")
    extra = f'<p class="mg-warn">{html.escape(view.message)}</p>' if view.message else ""
    where = f" · {html.escape(view.device)} ({html.escape(view.dtype)})" if view.device else ""
    params = f" · {fmt_count(view.params)} parameters" if view.params else ""
    return (f'<div class="mg-status"><div class="mg-bar"><div style="width:{pct:.1f}%"></div></div>'
            f"<p>{head}{params}{where}</p>{extra}</div>")


def estimate_html(est, limits=None) -> str:
    """The live read-out beside the knobs: parameters, memory, time, or why the settings cannot work."""
    if not est.ok:
        return f'<div class="mg-estimate mg-bad"><b>Cannot start:</b> {html.escape(est.error)}</div>'
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in est.notes)
    return (f'<div class="mg-estimate"><b>{est.params:,}</b> parameters · vocabulary {est.vocab_size:,} · '
            f"≈ <b>{est.memory_mb:,.0f} MB</b> to train · ≈ {est.step_ms:,.0f} ms a step → "
            f"≈ <b>{est.iters:,}</b> iterations in <b>{fmt_time(est.seconds)}</b>"
            + (f"<ul>{notes}</ul>" if notes else "") + "</div>")


# ---- generation -----------------------------------------------------------------------------------

def _prob_colour(p: float) -> str:
    """Red for tokens the model found unlikely, through yellow, to green for likely ones."""
    hue = 120 * max(0.0, min(1.0, p)) ** 0.5
    return f"hsl({hue:.0f}, 85%, 84%)"


def _tooltip(prob: float, top) -> str:
    alts = ", ".join(f"{show_token(piece)} {p:.2f}" for piece, p in top)
    return f"p = {prob:.3f} · model's top: {alts}"


def generated_html(prompt: str, tokens, colour: bool) -> str:
    """Prompt (grey) and generated text, each token coloured by its probability with alternatives on hover."""
    out = [f'<span class="mg-prompt">{html.escape(prompt)}</span>']
    for text, prob, top, _ in tokens:
        if not text:
            continue
        if colour:
            out.append(f'<span class="mg-tok" style="background:{_prob_colour(prob)}" '
                       f'title="{html.escape(_tooltip(prob, top), quote=True)}">{html.escape(text)}</span>')
        else:
            out.append(html.escape(text))
    return "".join(out)


def compare_html(columns, colour: bool = True) -> str:
    """The sampling comparison: one card per strategy with its text and its numbers."""
    if not columns:
        return '<div class="mg-empty">Press <b>Compare</b> to generate with each strategy from the same prompt and seed.</div>'
    cards = []
    for c in columns:
        ppl = f"{c['perplexity']:.2f}" if c["n"] and math.isfinite(c["perplexity"]) else "–"
        ll = f"{c['mean_loglik']:.3f}" if c["n"] and math.isfinite(c["mean_loglik"]) else "–"
        rep = c["repeats"] * 100
        flag = ' class="mg-hot"' if rep >= 30 else ""
        state = "" if c["done"] else ' <span class="mg-live">●</span>'
        cards.append(
            f'<div class="mg-card"><div class="mg-card-head"><b>{html.escape(c["name"])}</b>{state}'
            f'<span>perplexity <b>{ppl}</b> · avg log-lik {ll} · <span{flag}>repeats {rep:.0f}%</span> · '
            f'{c["tokens_per_s"]:.0f} tok/s</span></div>'
            f'<div class="mg-text">{generated_html(c["prompt"], c["tokens"], colour)}</div></div>')
    legend = ('<p class="mg-legend">Perplexity = exp(−average log-likelihood) of the generated tokens under the '
              "model (lower = the model found its own text more likely). “Repeats” = share of 4-token "
              "sequences already seen earlier in the text."
              + (" Colour = the probability the model gave each token (red low → green high); "
                 "hover a token for its top alternatives." if colour else "") + "</p>")
    return f'<div class="mg-grid">{"".join(cards)}</div>{legend}'


def next_token_figure(info: dict):
    """Top tokens at T = 1 with the chosen one highlighted, and the same logits at several temperatures."""
    fig = _figure(11, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.25])
    labels = [show_token(p) for p in info["pieces"]]
    ids, chosen = info["ids"], info["chosen"]
    xs = list(range(len(ids)))
    p1 = info["probs"][1.0]
    colours = [ORANGE if i == chosen else BLUE for i in ids]
    bars = left.bar(xs, p1, color=colours)
    for b, p in zip(bars, p1):
        left.annotate(f"{p:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                      fontsize=10, xytext=(0, 2), textcoords="offset points")
    left.set_xticks(xs, labels, fontsize=13, fontfamily="DejaVu Sans Mono")
    if len(ids) > 10:  # the chosen token was outside the top 10
        left.get_xticklabels()[-1].set_color(ORANGE)
        left.axvline(9.5, color=GREY, linestyle="--")
        left.annotate(f"rank {info['chosen_rank']}", (len(ids) - 1, max(p1) * 0.5), ha="center", fontsize=10,
                      color=ORANGE)
    left.set_ylabel("probability (T = 1)", fontsize=12)
    left.set_ylim(0, max(max(p1) * 1.18, 0.05))
    left.set_title(f"step {info['step']} of {info['column']}: chose {show_token(info['chosen_piece'])!s} "
                   f"(rank {info['chosen_rank']})", fontsize=12, color=INK)
    left.spines[["top", "right"]].set_visible(False)

    temps = sorted(info["probs"])
    width = 0.8 / len(temps)
    for k, t in enumerate(temps):
        offs = [x - 0.4 + width * (k + 0.5) for x in xs]
        note = " (sharper)" if t < 1 else " (flatter)" if t > 1 else ""
        right.bar(offs, info["probs"][t], width=width, color=TEMP_COLOURS.get(t, BLUE), label=f"T = {t:g}{note}")
    right.set_xticks(xs, labels, fontsize=13, fontfamily="DejaVu Sans Mono")
    for tick, i in zip(right.get_xticklabels(), ids):
        if i == chosen:
            tick.set_color(ORANGE)
            tick.set_fontweight("bold")
    right.set_ylabel("probability", fontsize=12)
    right.set_title("the same logits, softmax(logits / T)", fontsize=12, color=INK)
    right.legend(fontsize=11, frameon=False)
    right.spines[["top", "right"]].set_visible(False)
    for ax in (left, right):
        ax.tick_params(axis="y", labelsize=11)
    return fig


def cache_figure(speeds: dict):
    """Measured generation speed with and without the KV cache."""
    fig = _figure(7, 2.2)
    ax = fig.add_subplot()
    names = [("on", "KV cache on"), ("off", "KV cache off")]
    vals = [speeds.get(k, 0.0) for k, _ in names]
    bars = ax.barh([n for _, n in names], vals, color=[BLUE, GREY])
    for b, v in zip(bars, vals):
        ax.annotate(f"{v:,.0f} tok/s" if v else "not measured yet", (b.get_width(), b.get_y() + b.get_height() / 2),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=12)
    ax.set_xlim(0, max(vals + [1]) * 1.35)
    ax.invert_yaxis()
    ax.tick_params(labelsize=12)
    ax.set_xlabel("tokens per second", fontsize=12)
    if all(vals):
        ax.set_title(f"the cache is {vals[0] / vals[1]:.1f}× faster here" if vals[0] >= vals[1]
                     else f"no gain here ({vals[1] / vals[0]:.1f}× slower): the model or the text is too short",
                     fontsize=12)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


# ---- attention ------------------------------------------------------------------------------------

def _masked_heatmap(ax, w, tokens, labels: bool, fontsize: float):
    """One attention map: queries down, keys across, the causal mask (future keys) hatched grey."""
    import numpy as np
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Polygon
    T = w.shape[0]
    data = np.ma.masked_array(np.asarray(w, dtype=float), mask=np.triu(np.ones((T, T), dtype=bool), k=1))
    import matplotlib
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#f4f4f5")
    # A square-root colour scale: weights spread over many tokens stay visible, 0 and 1 keep their meaning.
    im = ax.imshow(data, cmap=cmap, norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), interpolation="nearest")
    if T > 1:
        verts = [(0.5, -0.5), (T - 0.5, -0.5), (T - 0.5, T - 1.5)]
        for i in range(T - 2, -1, -1):
            verts += [(i + 0.5, i + 0.5), (i + 0.5, i - 0.5)]
        ax.add_patch(Polygon(verts, closed=True, fill=False, hatch="///", edgecolor="#a1a1aa", linewidth=0.8))
    if labels:
        shown = [show_token(t) for t in tokens]
        ax.set_xticks(range(T), shown, fontsize=fontsize, fontfamily="DejaVu Sans Mono", rotation=90)
        ax.set_yticks(range(T), shown, fontsize=fontsize, fontfamily="DejaVu Sans Mono")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return im


def attention_figure(tokens, weights, layer: int, head: int):
    """The attention weights (T, T) of one head, tokens on both axes."""
    T = len(tokens)
    side = 6.6 if T <= 24 else 8.0
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = _masked_heatmap(ax, weights, tokens, True, max(6.0, min(13.0, 340.0 / max(T, 1))))
    ax.set_xlabel("key: the token looked at", fontsize=12)
    ax.set_ylabel("query: the token looking", fontsize=12)
    ax.set_title(f"layer {layer}, head {head} — each row sums to 1; hatched = the future, masked out",
                 fontsize=12, color=INK)
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.ax.tick_params(labelsize=10)
    return fig


def attention_grid(tokens, weights, layer: int):
    """Every head of one layer: weights (nh, T, T) as a grid of small maps."""
    nh = weights.shape[0]
    T = len(tokens)
    cols = min(nh, 4)
    rows = math.ceil(nh / cols)
    labels = T <= 20
    fig = _figure(3.1 * cols + 0.6, 3.1 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= nh:
            ax.axis("off")
            continue
        im = _masked_heatmap(ax, weights[h], tokens, labels, max(5.0, min(9.0, 160.0 / max(T, 1))))
        ax.set_title(f"head {h}", fontsize=12)
    fig.suptitle(f"layer {layer}: all {nh} heads (rows = queries, columns = keys; hatched = masked future)",
                 fontsize=12, color=INK)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6)
    return fig


# ---- tokenizers -----------------------------------------------------------------------------------

def _chips(tokens, unknown_label: str = "not in vocabulary") -> str:
    out = []
    for k, (piece, tid) in enumerate(tokens):
        colour = CHUNK_COLOURS[k % len(CHUNK_COLOURS)] if tid is not None else "#fecaca"
        label = str(tid) if tid is not None else "?"
        title = f"id {tid}" if tid is not None else unknown_label
        out.append(f'<span class="mg-chip" style="background:{colour}" title="{html.escape(title, quote=True)}">'
                   f'<span class="mg-chip-t">{html.escape(show_token(piece))}</span>'
                   f'<span class="mg-chip-i">{label}</span></span>')
    return "".join(out)


def tokens_html(result: dict, max_tokens: int = 600) -> str:
    """The text split by the char tokenizer and by GPT-2 BPE, as coloured chips with their ids."""
    parts = []
    n = result["chars"]
    for key, title, blurb in (
            ("char", "Character tokenizer",
             "one token per character; the vocabulary is every character in Tiny Shakespeare"),
            ("gpt2", "GPT-2 BPE (tiktoken)",
             "byte-pair encoding: frequent chunks of bytes merged into single tokens")):
        r = result[key]
        toks = r["tokens"]
        more = f' <span class="mg-muted">(first {max_tokens} shown)</span>' if len(toks) > max_tokens else ""
        ratio = f" · {n / r['count']:.2f} characters a token" if r["count"] else ""
        unknown = f'<p class="mg-warn">{html.escape(r["error"])}</p>' if r.get("error") else ""
        if r.get("unknown"):
            unknown = (f'<p class="mg-warn">{len(r["unknown"])} character(s) are not in the char vocabulary: '
                       f'{html.escape(" ".join(show_token(c) for c in r["unknown"]))} — the char model cannot read them.</p>')
        parts.append(f'<div class="mg-tokbox"><h3>{title}: <b>{r["count"]:,}</b> tokens · vocabulary '
                     f'<b>{r["vocab_size"]:,}</b>{ratio}</h3><p class="mg-muted">{blurb}</p>'
                     f'<div class="mg-chips">{_chips(toks[:max_tokens])}{more}</div>{unknown}</div>')
    return "".join(parts)


def model_html(info: dict) -> str:
    """A one-line badge for the current model."""
    c = info["config"]
    shape = (f"{c['n_layer']} layers × {c['n_embd']} wide, {c['n_head']} heads, context {c['block_size']}"
             if c["model"] == "gpt" else "bigram table")
    val = info["training"].get("val_loss")
    val = f" · val loss <b>{val:.3f}</b>" if isinstance(val, (int, float)) else ""
    busy = " · <b>training…</b>" if info.get("training_now") else ""
    arch = info.get("architecture", "standard GPT")
    if c["model"] == "gpt" and arch != "standard GPT":  # name every switch that differs from the standard GPT
        shape += f" · {arch}"
    opt = trained_with(info["training"])
    opt = f" · trained with {html.escape(opt)}" if opt else ""
    return (f'<div class="mg-model">Current model: <b>{html.escape(info["source"])}</b> · {html.escape(shape)} · '
            f'{fmt_count(info["params"])} parameters · {html.escape(info["tokenizer"])} tokenizer '
            f'({info["vocab_size"]:,} tokens){val}{opt} · {html.escape(info["device"])}{busy}</div>')


def trained_with(card: dict) -> str:
    """The optimizer a run card says trained the model ("Muon", "AdamW"), or "" when it does not say."""
    kind = card.get("optimizer") or (card.get("train_config") or {}).get("optimizer")
    return OPTIMIZER_NAMES.get(kind, str(kind)) if kind else ""


def model_markdown(info: dict) -> str:
    """The Checkpoints tab's summary of the current model: config, size, device and its run card."""
    c, t = info["config"], info["training"]
    rows = [("source", info["source"]),
            ("model", f"{c['model']}: {c['n_layer']} layers, {c['n_head']} heads, {c['n_embd']} wide, context "
                      f"{c['block_size']}, dropout {c['dropout']}" if c["model"] == "gpt" else "bigram (a vocab × vocab table)"),
            ("architecture", info.get("architecture", "standard GPT")),
            ("parameters", f"{info['params']:,}"),
            ("tokenizer", f"{info['tokenizer']} ({info['vocab_size']:,} tokens)"),
            ("device", f"{info['device']} (inference in {info['dtype']})")]
    if t:
        val = t.get("val_loss")
        tc = t.get("train_config") or {}
        rows += [("trained", f"{t.get('iters', '?')} iterations in {t.get('seconds', '?')} s on {t.get('device', '?')} "
                             f"({t.get('dtype', '?')}), data {t.get('data', '?')}"),
                 ("settings", f"seed {t.get('seed')}, batch {tc.get('batch_size', '?')}, lr {tc.get('lr', '?')}"
                              + (f", optimizer {trained_with(t)}" if trained_with(t) else "")
                              + (f" (Muon lr {tc['muon_lr']})" if tc.get("optimizer") == "muon" and "muon_lr" in tc
                                 else "")),
                 ("full validation loss", f"**{val:.4f}**" if isinstance(val, (int, float)) else "n/a"),
                 ("versions", f"torch {t.get('torch_version', '?')}, minigpt {t.get('minigpt_version', '?')}")]
    if info.get("training_now"):
        rows.append(("now", "**training** (Stop it before loading another model)"))
    body = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows)
    return "| current model | |\n|---|---|\n" + body


CSS = """
.mg-status p, .mg-estimate { font-size: 1.05rem; margin: .3rem 0; }
.mg-bar { height: 14px; background: #e4e4e7; border-radius: 7px; overflow: hidden; }
.mg-bar > div { height: 100%; background: linear-gradient(90deg, #6366f1, #4f46e5); transition: width .4s; }
.mg-estimate { padding: .5rem .75rem; border-radius: 8px; background: #eef2ff; }
.mg-estimate ul { margin: .25rem 0 0 1.2rem; font-size: .95rem; }
.mg-bad { background: #fee2e2; color: #7f1d1d; }
.mg-warn { color: #9a3412; }
.mg-muted { color: #71717a; font-size: .95rem; }
.mg-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: .75rem; }
.mg-card { border: 1px solid #e4e4e7; border-radius: 10px; padding: .6rem .75rem; background: white; }
.mg-card-head { display: flex; flex-direction: column; gap: .15rem; font-size: 1rem; margin-bottom: .4rem; }
.mg-card-head span { font-size: .9rem; color: #52525b; }
.mg-hot { color: #b91c1c; font-weight: 600; }
.mg-live { color: #16a34a; }
.mg-text { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 1.02rem; line-height: 1.45;
           white-space: pre-wrap; word-break: break-word; max-height: 22rem; overflow-y: auto; color: #18181b; }
.mg-prompt { color: #71717a; font-weight: 600; }
.mg-tok { border-radius: 3px; }
.mg-legend { font-size: .9rem; color: #52525b; margin-top: .5rem; }
.mg-empty { color: #71717a; padding: 1rem; }
.mg-chips { display: flex; flex-wrap: wrap; gap: 3px; }
.mg-chip { display: inline-flex; flex-direction: column; align-items: center; border-radius: 5px; padding: 2px 5px;
           font-family: ui-monospace, "DejaVu Sans Mono", monospace; color: #18181b; }
.mg-chip-t { font-size: 1.05rem; white-space: pre; }
.mg-chip-i { font-size: .72rem; color: #52525b; }
.mg-tokbox h3 { margin: .6rem 0 .1rem 0; font-size: 1.1rem; }
.mg-model { font-size: 1rem; padding: .4rem .7rem; border-radius: 8px; background: #f4f4f5; }
.mg-header h2 { margin: 0 0 .2rem 0; }
.mg-sub { font-size: 1rem; font-weight: 400; color: #52525b; margin-left: .5rem; }
"""
