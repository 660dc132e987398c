"""The Attention tab: the current model's attention weights for any text (one head, or all heads of
a layer), and "Why divide by √d?": the spread of its real q·k scores with and without the 1/√d.

Endpoints: /attention, /attention_scores. May import gradio, minigpt's core and
minigpt.ui.common / inputs.
"""

from __future__ import annotations

import gradio as gr

from minigpt import experiment_plots, experiments, plots
from minigpt.limits import check_int

from .common import VIEWS, Page, drawn, session_of, user_errors
from .inputs import Dropdown


@user_errors
def attention(text, layer, head, request: gr.Request = None):
    """Attention weights of the current model for `text` (empty: the last prompt), one head or all."""
    s = session_of(request)
    a = s.attention(text)
    layer = check_int("layer", layer if layer not in (None, "") else 0, 0, a["n_layer"] - 1)
    if head in (None, "", "all"):
        fig = drawn(plots.attention_grid, a["tokens"], a["weights"][layer], layer)
    else:
        try:
            h = check_int("head", head, 0, a["n_head"] - 1)
        except ValueError:
            raise ValueError(f"head must be 'all' or between 0 and {a['n_head'] - 1}, got {head!r}") from None
        fig = drawn(plots.attention_figure, a["tokens"], a["weights"][layer, h], layer, h)
    note = f"{len(a['tokens'])} tokens"
    if a["cropped"]:
        why = (f"the model's context is {a['block_size']}" if a["block_size"] <= a["shown_max"]
               else f"the view shows at most {a['shown_max']}")
        note += f" (the last {len(a['tokens'])} of the text: {why})"
    return fig, note


@user_errors
def attention_scores(text, request: gr.Request = None):
    """Per layer: the spread of the current model's q·k scores over `text`, with and without 1/sqrt(d)."""
    result = session_of(request).score_scale(text)
    return drawn(experiment_plots.model_scores_figure, result), experiments.tables_markdown(result.tables())


def attention_choices(request: gr.Request = None):
    """The layer and head choices of the current model (refreshed when the tab opens)."""
    try:
        cfg = session_of(request).current().model.config
    except ValueError:
        return gr.skip(), gr.skip()
    n_layer, n_head = (cfg.n_layer, cfg.n_head) if cfg.model == "gpt" else (1, 1)
    return (gr.Dropdown(choices=[(f"layer {i}", i) for i in range(n_layer)], value=0),
            gr.Dropdown(choices=[("all heads", "all")] + [(f"head {i}", str(i)) for i in range(n_head)], value="all"))


def build(page: Page, tab: gr.Tab) -> dict:
    """Lay out the Attention tab inside `tab` and wire it."""
    with gr.Row():
        text = gr.Textbox(label="Text (empty: the last prompt)", lines=2, scale=4,
                          value="ROMEO:\nBut soft, what light through yonder window breaks?")
        # Choices follow the current model (refreshed when the tab opens); the handler checks the range.
        layer = Dropdown([("layer 0", 0)], value=0, label="layer", scale=1, allow_custom_value=True)
        head = Dropdown([("all heads", "all")], value="all", label="head", scale=1, allow_custom_value=True)
        btn = gr.Button("Show attention", variant="primary", scale=1, elem_id="attention-btn")
    note = gr.Markdown("Rows are the tokens looking (queries), columns the tokens looked at (keys). "
                       "A token may only attend to itself and earlier tokens: the hatched triangle is masked out.")
    plot = gr.Plot(label="attention", show_label=False, elem_id="attention-plot", format="png")
    with gr.Accordion("Why divide by √d? The scores inside this model", open=False):
        gr.Markdown(experiments.EXPLANATIONS["model_scores"] + " (The Concepts tab shows the same with random "
                    "vectors.)")
        scores_btn = gr.Button("Measure the scores of the text above", elem_id="scores-btn")
        scores_plot = gr.Plot(label="scores", show_label=False, elem_id="scores-plot", format="png")
        scores_numbers = gr.Markdown(elem_id="scores-numbers")

    btn.click(attention, [text, layer, head], [plot, note], api_name="attention", **VIEWS)
    scores_btn.click(attention_scores, text, [scores_plot, scores_numbers], api_name="attention_scores", **VIEWS)
    tab.select(attention_choices, None, [layer, head], api_visibility="private", queue=False)
    return dict(text=text, plot=plot)
