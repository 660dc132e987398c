"""The Build it up tab: the ladder from a bigram table to a GPT (minigpt/ladder.py), measured and live,
and "From averaging to attention" (minigpt/averaging.py) for a text the learner edits.

Endpoints: /ladder (streams), /ladder_stop, /averaging; every parameter has the page's default, so
each can be called with no arguments. The ladder is one training job of the session
(minigpt/ladder_session.py): it shares the Train tab's pool and lock, and either tab's Stop stops
it. May import gradio, minigpt's core (torch-free modules at import time; averaging and views in
the handlers) and minigpt.ui.common / inputs.
"""

from __future__ import annotations

import time

import gradio as gr

from minigpt import ladder_html, ladder_session
from minigpt.ladder import LADDER_NORMS, NORM_NAMES, LadderConfig, load_measured
from minigpt.ladder_plots import attention_vs_average_figure, averaging_figure, ladder_bars_figure, ladder_curves_figure
from minigpt.ladder_session import LadderView
from minigpt.limits import check_int, check_text

from .common import INFER, LIMITS, PLAYGROUND, Page, drawn, session_of, user_errors
from .inputs import Number, Radio, Slider

PAGE_ITERS = 300          # steps per rung on the page: the whole ladder in a few minutes on 2 cores
MAX_ITERS = min(5000, LIMITS.max_iters)
AVERAGING_TEXT = "First Citizen"
FIGURE_EVERY = 3.0        # seconds between redraws of the live curves (rendering costs training CPU)

try:
    MEASURED = load_measured()
except ValueError:        # no record shipped: the tab still runs the ladder live
    MEASURED = None
_settings = (MEASURED or {}).get("settings", {})
MEASURED_NOTE = (f"CLI, {_settings.get('iters_per_rung') or '?'} steps, {_settings.get('n_embd', '?')} wide"
                 if MEASURED else "")

INTRO = f"""The lecture climbs from a bigram table to a GPT **one idea at a time**. Each rung below is the
model of the rung before plus one idea, trained with the same data, width, context, seed and budget,
so the difference in validation loss is what that idea is worth (the seed notebook beside it shows the idea
in code). The numbers shown first were
**measured** with the command line; **Run the ladder** measures them again here, live (the whole ladder
is one training job: at most {LIMITS.max_train_seconds:g} s on this server, and Stop ends it like the
Train tab's). Where a rung does not help at this budget it says so beside it."""

AVERAGING_INTRO = """Self-attention starts from a plain average: each token's mean with all the tokens before it.
Here it is computed three ways for the text you type: **(a)** with a loop, **(b)** as one product with a
row-normalised lower-triangular matrix, **(c)** as a softmax over zeros with the future masked to −inf.
Each token is a one-hot row (one column per distinct token), so a row of the average reads as the share
of each token so far. Then **(d)**: the current model's attention for the same text uses (c)'s mask and
softmax, with q·k/√d in place of the zeros: the uniform average becomes data-dependent."""


def evals_for(iters: int) -> int:
    """Loss estimates per rung: one every 20 steps, 2 to 15 (each costs about 7 training steps)."""
    return max(2, min(15, iters // 20))


def _measured_view() -> tuple:
    done = MEASURED["rungs"] if MEASURED else []
    norm = (MEASURED or {}).get("settings", {}).get("norm", "layer")
    return done, norm


def ladder_outputs(view: LadderView, curves: bool = True, bars: bool = True):
    """(status, curves, bars, table, samples) of a view; figures only when asked (gr.skip() otherwise)."""
    measured, measured_norm = _measured_view()
    if view.state == "idle" and not view.done:
        done, norm, rungs, beside = measured, measured_norm, measured, None
    else:
        done, norm, rungs = view.done, view.settings.get("norm", "layer"), view.rung_dicts()
        beside = measured if measured else None
    return (ladder_html.status_html(view, MEASURED),
            ladder_curves_figure(rungs) if curves else gr.skip(),
            ladder_bars_figure(done) if bars else gr.skip(),
            ladder_html.table_html(done, norm, view.live, beside, MEASURED_NOTE),
            ladder_html.samples_html(done))


@user_errors
def run_ladder(iters_per_rung=PAGE_ITERS, norm="layer", n_embd=128, block_size=64, seed=1337,
               request: gr.Request = None, progress=gr.Progress()):
    """Train the eight rungs one after another in this session, streaming the curves, a bar per finished
    rung, the table and each rung's sample."""
    s = session_of(request)
    settings = LadderConfig(iters_per_rung=check_int("iterations per rung", iters_per_rung, 1, MAX_ITERS),
                            n_embd=n_embd, block_size=block_size, norm=norm, seed=seed,
                            evals=evals_for(int(iters_per_rung)), device=PLAYGROUND.device)
    drawn_at, drawn_done, drawn_points = 0.0, -1, -1
    for view in ladder_session.ladder(s, settings, interval=1.0):
        now = time.monotonic()
        final = view.state == "done"
        points = sum(len(r.get("curve", [])) for r in view.rung_dicts())
        curves = final or (points != drawn_points and now - drawn_at >= FIGURE_EVERY)
        bars = final or len(view.done) != drawn_done
        if curves:
            drawn_at, drawn_points = now, points
        if bars:
            drawn_done = len(view.done)
        live = view.live or {}
        frac = live["iter"] / live["max_iters"] if live.get("max_iters") else 0.0
        progress((len(view.done) + frac) / view.rungs, desc=f"rung {view.rung} of {view.rungs}")
        yield ladder_outputs(view, curves, bars)


@user_errors
def stop_ladder(request: gr.Request = None):
    """Stop this session's ladder: at once which rung and step it stopped at, then, when that rung's
    full validation and sample are in, the final view."""
    s = session_of(request)
    first = ladder_session.stop_soon(s)
    yield ladder_outputs(first, curves=False, bars=False)
    if first.state in ("stopped", "stopping", "waiting"):
        yield ladder_outputs(ladder_session.stop(s))


@user_errors
def average(text=AVERAGING_TEXT, layer=0, head=0, request: gr.Request = None):
    """(a) loop, (b) tril matmul, (c) masked softmax for `text`, their largest differences, and (d) the
    current model's attention (layer, head) for the same tokens."""
    from minigpt.averaging import averaging
    from minigpt.views import one_thread
    text = check_text("text", text, LIMITS.max_prompt_chars)
    ref = session_of(request).inference_model()
    with one_thread():
        avg = averaging(text, ref.tokenizer, ref.model)
    if avg.attention is not None:
        n_layer, n_head = avg.attention.shape[:2]
        layer = check_int("layer", layer, 0, n_layer - 1)
        head = check_int("head", head, 0, n_head - 1)
    numbers = {"tokens": avg.tokens, "diff_tril": avg.diff_tril, "diff_softmax": avg.diff_softmax,
               "diff_weights": avg.diff_weights, "max_diff": avg.max_diff, "cropped": avg.cropped,
               "model": ref.source, "attention": avg.attention is not None}
    cropped = f" (its last {len(avg.tokens)} tokens)" if avg.cropped else ""
    note = (f"**{len(avg.tokens)} tokens**{cropped}, {len(avg.columns)} distinct. Largest difference from the loop "
            f"(a): **(b) {avg.diff_tril:.1e}**, **(c) {avg.diff_softmax:.1e}**; the weights of (b) and (c) differ by "
            f"at most {avg.diff_weights:.1e} (float64). (d) uses the current model: {ref.source}.")
    return (averaging_figure(avg), note,
            attention_vs_average_figure(avg, int(layer or 0), int(head or 0)), numbers)


def measured_figures(request: gr.Request = None):
    """The measured ladder's curves and bars when the tab opens, until this session runs a ladder of
    its own (drawn once for every session, not while the page is built: matplotlib stays off the
    cold start)."""
    state = ladder_session.state_of(session_of(request))
    if state.live is not None or state.view.state != "idle" or state.view.done:
        return gr.skip(), gr.skip()
    measured, _ = _measured_view()
    return drawn(ladder_curves_figure, measured), drawn(ladder_bars_figure, measured)


def build(page: Page, tab: gr.Tab) -> dict:
    """Lay out the Build it up tab inside `tab` and wire it."""
    gr.Markdown(INTRO)
    status0, _, _, table0, samples0 = ladder_outputs(LadderView(), curves=False, bars=False)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            norm = Radio([(NORM_NAMES[n], n) for n in LADDER_NORMS], value="layer",
                         label="norm of rungs 7–8", elem_id="ladder-norm")
            iters = Slider(10, MAX_ITERS, value=PAGE_ITERS, step=10, label="iterations per rung",
                           elem_id="ladder-iters")
            with gr.Accordion("Width, context, seed", open=False):
                n_embd = Slider(16, min(512, LIMITS.max_embd), value=128, step=16, label="width (n_embd)",
                                elem_id="ladder-width")
                block_size = Slider(8, min(256, LIMITS.max_context), value=64, step=8, label="context",
                                    elem_id="ladder-context")
                seed = Number(1337, label="seed", precision=0, minimum=0, elem_id="ladder-seed")
            with gr.Row():
                run_btn = gr.Button("Run the ladder", variant="primary", elem_id="ladder-run")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="ladder-stop")
            gr.Markdown("<span class='mg-muted'>The measured run used 1000 steps per rung (about 10 minutes on a "
                        "busy 2-core machine); 300 take a few minutes. The lecture's numbers (GPU, 5000 steps, "
                        "384 wide) are the black diamonds.</span>")
        with gr.Column(scale=3, min_width=480):
            status = gr.HTML(status0, elem_id="ladder-status")
            table = gr.HTML(table0, elem_id="ladder-table")
    with gr.Row():
        curves = gr.Plot(show_label=False, elem_id="ladder-curves", format="png")
        bars = gr.Plot(show_label=False, elem_id="ladder-bars", format="png")
    with gr.Accordion("A sample from each rung (T = 0.8, the same seed)", open=True):
        samples = gr.HTML(samples0, elem_id="ladder-samples")

    with gr.Accordion("From averaging to attention", open=True):
        gr.Markdown(AVERAGING_INTRO)
        with gr.Row():
            text = gr.Textbox(AVERAGING_TEXT, label="Text (up to 32 tokens are shown)", scale=4,
                              elem_id="averaging-text")
            layer = Number(0, label="layer", precision=0, minimum=0, maximum=LIMITS.max_layers - 1, scale=1,
                           elem_id="averaging-layer")
            head = Number(0, label="head", precision=0, minimum=0, maximum=LIMITS.max_heads - 1, scale=1,
                          elem_id="averaging-head")
            avg_btn = gr.Button("Average", variant="primary", scale=1, elem_id="averaging-btn")
        avg_note = gr.Markdown(elem_id="averaging-note")
        avg_plot = gr.Plot(show_label=False, elem_id="averaging-plot", format="png")
        attn_plot = gr.Plot(show_label=False, elem_id="averaging-attention", format="png")
        with gr.Accordion("The numbers", open=False):
            avg_json = gr.JSON(label="differences", elem_id="averaging-json")

    outputs = [status, curves, bars, table, samples]
    # The ladder is a training job: the Train tab's pool. The playground's training queue (which
    # streams a waiting run's place) gates it, so the pool needs no limit of its own, as the Train tab's.
    ladder_ev = run_btn.click(run_ladder, [iters, norm, n_embd, block_size, seed], outputs, api_name="ladder",
                              concurrency_limit=None, concurrency_id="train", show_progress="hidden")
    stop_btn.click(stop_ladder, None, outputs, api_name="ladder_stop", concurrency_limit=None,
                   show_progress="hidden", cancels=[ladder_ev])
    avg_out = [avg_plot, avg_note, attn_plot, avg_json]
    avg_btn.click(average, [text, layer, head], avg_out, api_name="averaging", **INFER)
    text.submit(average, [text, layer, head], avg_out, api_visibility="private", **INFER)
    tab.select(average, [text, layer, head], avg_out, api_visibility="private", **INFER)
    tab.select(measured_figures, None, [curves, bars], api_visibility="private", **INFER)
    return dict(run=run_btn, stop=stop_btn, status=status)
