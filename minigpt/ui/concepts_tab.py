"""The Concepts tab: three small experiments behind the design of a GPT (UI only).

Call `build_concepts_tab()` inside an open `gr.Blocks()` (usually inside `gr.Tab("Concepts")`;
`build(page, tab)` does that for the page).
Each experiment gets a sub-tab with its knobs, a Run button, the figures with what to look for
under each, and the numbers. Handlers call minigpt/experiments/ for the numbers and
minigpt/experiment_plots.py for the figures; ranges and defaults come from the knobs there.
The gradient and norm experiments end with a button that sets the Train tab up to show the same
idea in a real GPT (minigpt/ui/architecture.py; layout.py wires it across the tabs).
API endpoints: /softmax_scaling, /gradient_flow, /norm_compare. May import gradio, minigpt's core
and minigpt.ui.inputs / architecture.
"""

from __future__ import annotations

import gradio as gr

from minigpt import experiment_plots as P
from minigpt import experiments as E
from .architecture import try_button
from .inputs import CheckboxGroup, Dropdown, Number, Slider

EVENT = dict(show_progress="minimal", trigger_mode="always_last", concurrency_limit=2, concurrency_id="concepts")


def _run(fn, kind: str, **kwargs):
    """Numbers, then the figures and the tables; a bad knob becomes a message on the page."""
    try:
        result = fn(**kwargs)
    except ValueError as e:
        raise gr.Error(str(e)) from None
    return (*(build(result) for _, build in P.FIGURES[kind]), E.tables_markdown(result.tables()))


def softmax_scaling(dims, seq_len, pairs, example_scale, example_logits, seed):
    return _run(E.softmax_scaling, "softmax", dims=dims, seq_len=seq_len, pairs=pairs,
                example_scale=example_scale, example_logits=example_logits, seed=seed)


def gradient_flow(depth, width, activations, init, residual, layernorm, explode_gain, max_norm, lr, sgd_steps, seed):
    return _run(E.gradient_flow, "gradients", depth=depth, width=width, activations=activations, init=init,
                residual=residual, layernorm=layernorm, explode_gain=explode_gain, max_norm=max_norm, lr=lr,
                sgd_steps=sgd_steps, seed=seed)


def norm_compare(batch, features, shift, scale, feature_spread, bn_updates, seed):
    return _run(E.norm_compare, "norms", batch=batch, features=features, shift=shift, scale=scale,
                feature_spread=feature_spread, bn_updates=bn_updates, seed=seed)


# ---- layout ------------------------------------------------------------------------------------------

def _slider(knobs: dict, name: str, label: str, step=None):
    k = knobs[name]
    return Slider(k.lo, k.hi, value=k.default, step=step or 1, label=label, info=k.help)


def _number(knobs: dict, name: str, label: str):
    k = knobs[name]
    return Number(k.default, label=label, info=f"{k.help} ({k.lo:g} to {k.hi:g})", minimum=k.lo, maximum=k.hi,
                  precision=0 if k.integer else None, step=k.lo if not k.integer else 1)


def _seed():
    return Number(E.SEED.default, label="seed", precision=0, minimum=E.SEED.lo, maximum=E.SEED.hi)


def _figures(kind: str, numbers_open: bool = False, code=(), links: dict | None = None):
    """A plot and its explanation per figure, optional source code (module, function names), then the
    numbers; returns the outputs.
    With `links`, the first figure is followed by its "try it in a GPT" button, put in `links[kind]`."""
    outputs = []
    for i, (key, _) in enumerate(P.FIGURES[kind]):
        outputs.append(gr.Plot(show_label=False, elem_id=f"concepts-{key}", format="png"))
        gr.Markdown(E.EXPLANATIONS[key], elem_classes="mg-explain")
        if i == 0 and links is not None:
            links[kind] = try_button(kind)
    if code:
        with gr.Accordion("The formulas by hand (compared with torch.nn in the numbers below)", open=False):
            gr.Code(E.source_of(*code), language="python", interactive=False)
    with gr.Accordion("Numbers", open=numbers_open):
        outputs.append(gr.Markdown(elem_id=f"concepts-{kind}-numbers"))
    return outputs


def _wire(knobs: list, run_btn, extra_triggers: list, fn, outputs, api_name: str):
    """Run on the button, on releasing a slider, on changing a choice, and when the sub-tab opens."""
    triggers = [run_btn.click, *extra_triggers]
    for k in knobs:
        if isinstance(k, gr.Slider):
            triggers.append(k.release)
        elif isinstance(k, (gr.Number, gr.Textbox)):
            triggers.append(k.submit)
        else:
            triggers.append(k.input)
    gr.on(triggers, fn, knobs, outputs, api_name=api_name, **EVENT)


def build_concepts_tab() -> dict:
    """Lay out the three experiments; returns the "try it in the Train tab" buttons by experiment."""
    # The first sub-tab draws itself when its parent tab opens (or, standalone, when the page loads);
    # the others when they are selected, so opening the app costs nothing.
    parent = gr.context.Context.block
    first_show = parent.select if isinstance(parent, gr.Tab) else gr.context.Context.root_block.load
    S, G, N = E.SOFTMAX_KNOBS, E.GRADIENT_KNOBS, E.NORM_KNOBS
    links = {}  # experiment -> its "try it in a GPT" button
    with gr.Tabs():
        with gr.Tab("Softmax and √d", id="concepts-softmax"):  # selected by default: first_show draws it
            gr.Markdown("Why attention computes softmax(q·k / √d): draw random queries and keys with "
                        "unit-variance entries, score them with and without the 1/√d, and watch softmax.")
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    dims = CheckboxGroup(list(E.DIM_CHOICES), value=list(E.DEFAULT_DIMS),
                                         label="head dimensions d")
                    seq_len = _slider(S, "seq_len", "T (keys per softmax row)")
                    pairs = _slider(S, "pairs", "random q, k pairs per d", step=100)
                    example_logits = gr.Textbox(", ".join(f"{z:g}" for z in E.EXAMPLE_LOGITS),
                                                label="example logits", info="comma-separated; Enter to run")
                    example_scale = _slider(S, "example_scale", "example scale factor", step=0.1)
                    seed = _seed()
                    run = gr.Button("Run", variant="primary")
                with gr.Column(scale=3):
                    outputs = _figures("softmax")
            _wire([dims, seq_len, pairs, example_scale, example_logits, seed], run, [first_show],
                  softmax_scaling, outputs, "softmax_scaling")

        with gr.Tab("Vanishing & exploding gradients", id="concepts-gradients") as grad_tab:
            gr.Markdown("One backward pass through a deep MLP (Linear → activation, repeated) on a fixed random "
                        "batch; then a deep stack with too-large weights trained by SGD with and without "
                        "`clip_grad_norm_`.")
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    depth = _slider(G, "depth", "depth")
                    width = _slider(G, "width", "width")
                    activations = CheckboxGroup(list(E.ACTIVATIONS), value=list(E.DEFAULT_ACTIVATIONS),
                                                label="activations (one line each)")
                    init = Dropdown(list(E.INITS), value="default", label="weight init",
                                    info="; ".join(f"{k}: {v}" for k, v in E.INITS.items()))
                    residual = gr.Checkbox(False, label="residual connections (x + f(x))")
                    layernorm = gr.Checkbox(False, label="LayerNorm before each layer")
                    gr.Markdown("**Exploding side: clipping demo**")
                    explode_gain = _slider(G, "explode_gain", "init gain", step=0.05)
                    max_norm = _number(G, "max_norm", "max_norm")
                    lr = _number(G, "lr", "learning rate")
                    sgd_steps = _slider(G, "sgd_steps", "SGD steps")
                    seed = _seed()
                    run = gr.Button("Run", variant="primary")
                with gr.Column(scale=3):
                    outputs = _figures("gradients", links=links)
            _wire([depth, width, activations, init, residual, layernorm, explode_gain, max_norm, lr, sgd_steps, seed],
                  run, [grad_tab.select], gradient_flow, outputs, "gradient_flow")

        with gr.Tab("LayerNorm vs BatchNorm", id="concepts-norms") as norm_tab:
            gr.Markdown("A batch of activations (samples × features, each feature with its own offset) through "
                        "`nn.LayerNorm` and `nn.BatchNorm1d`, next to the formulas written by hand.")
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    batch = _slider(N, "batch", "batch size")
                    features = _slider(N, "features", "features")
                    shift = _slider(N, "shift", "shift (mean)", step=0.1)
                    scale = _slider(N, "scale", "scale (std)", step=0.01)
                    feature_spread = _slider(N, "feature_spread", "per-feature offset spread", step=0.1)
                    bn_updates = _slider(N, "bn_updates", "BatchNorm training batches before eval")
                    seed = _seed()
                    run = gr.Button("Run", variant="primary")
                with gr.Column(scale=3):
                    outputs = _figures("norms", numbers_open=True,
                                       code=("norms", "layer_norm_manual", "batch_norm_manual"), links=links)
            _wire([batch, features, shift, scale, feature_spread, bn_updates, seed], run, [norm_tab.select],
                  norm_compare, outputs, "norm_compare")
    return links


def build(page, tab: gr.Tab) -> dict:
    """The page's Concepts tab (its sub-tabs draw themselves when opened); returns its "try" buttons."""
    return {"try": build_concepts_tab()}
