"""The Train tab's architecture switches and per-block plots, and the Concepts tab's "try it in the
Train tab" settings.

- `build_switches()`: the "Architecture" accordion (closed by default): GPTConfig's five switches,
  each with one line on what it does, and the BatchNorm note;
- `build_layer_plots()` / `LayerFigures`: the gradient norm and activation spread per block, drawn
  from a TrainView's `layers` (minigpt/layer_plots.py) whenever a new evaluation brings them;
- `try_button(key)` and `link_concepts(...)`: a button under a Concepts experiment that fills the
  Train tab's knobs with a setting that shows the same idea in a real GPT, and opens that tab.

May import gradio, minigpt's core and minigpt.ui.inputs.
"""

from __future__ import annotations

import time

import gradio as gr

from minigpt import layer_plots
from minigpt.train_spec import TrainSpec

from .inputs import Checkbox, Radio

D = TrainSpec()  # the standard GPT's switches are the knobs' starting values

NORM_CHOICES = [("LayerNorm", "layer"), ("BatchNorm", "batch"), ("RMSNorm", "rms"), ("none", "none")]
ACTIVATION_CHOICES = [("GELU", "gelu"), ("ReLU", "relu"), ("sigmoid", "sigmoid"), ("tanh", "tanh")]

HELP = {
    "norm": "what normalises each sublayer's input: LayerNorm (each token over its features), BatchNorm (each "
            "feature over batch × time), RMSNorm (LayerNorm without the mean), or nothing",
    "residual": "on: each sublayer adds to the stream (x + f(x)); off: it replaces it (x = f(x)), the plain deep "
                "stack in which gradients vanish",
    "mlp": "the feed-forward sublayer of each block (4× wide); off: attention only, and nothing to activate",
    "pos_emb": "learned position embeddings (wpe); off: only the causal mask tells positions apart",
    "activation": "the MLP's nonlinearity; sigmoid and tanh saturate, so gradients shrink from block to block",
}

BATCHNORM_NOTE = (
    "**BatchNorm, honestly.** While training it normalises each feature over the whole batch × time: a "
    "token's mean and variance include the other sequences of the batch *and the later positions of its own "
    "sequence*, so the future leaks past the causal mask. In evaluation and generation it uses its running "
    "statistics, each token alone: the model is causal again, but it is normalised differently from how it "
    "trained (and one token alone cannot be batch-normalised at all). That is part of why transformers use "
    "LayerNorm, which normalises each token on its own.")

PLOTS_NOTE = ("Per block, at every evaluation (the latest bold, earlier ones grey): the gradient norm of the "
              "block's weights on a log axis (the Concepts tab's vanishing-gradient picture, in this network) "
              "and the spread of the residual stream after it.")

# Concepts experiment -> (button text, what to watch, the Train tab's knobs for it).
TRY = {
    "gradients": ("Try it in a GPT: 8 layers, sigmoid, no residual, no norm",
                  "Sets the Train tab to 8 layers with a sigmoid MLP, no residual connections and no norm: press "
                  "Start and watch the first blocks' gradient vanish in the per-block plot (first / last in its "
                  "title) while the loss stalls; then turn the residual connections back on.",
                  dict(model="gpt", n_layer=8, eval_interval=20, norm="none", residual=False, mlp=True, pos_emb=True,
                       activation="sigmoid")),
    "norms": ("Try it in a GPT: BatchNorm instead of LayerNorm",
              "Sets the Train tab's norm to BatchNorm (4 layers, the rest standard): press Start, compare the "
              "validation loss with a LayerNorm run, and read the Architecture group's note on why BatchNorm is "
              "not causal while training.",
              dict(model="gpt", n_layer=4, eval_interval=50, norm="batch", residual=True, mlp=True, pos_emb=True,
                   activation="gelu")),
}
TARGETS = ("model", "n_layer", "eval_interval", "norm", "residual", "mlp", "pos_emb", "activation")


def build_switches() -> tuple[gr.Accordion, dict]:
    """The Architecture accordion, closed; returns it and its five switches by GPTConfig field name."""
    with gr.Accordion("Architecture (the standard GPT, or parts of it switched off)", open=False,
                      elem_id="arch-group") as group:
        norm = Radio(NORM_CHOICES, value=D.norm, label="norm", info=HELP["norm"], elem_id="arch-norm")
        activation = Radio(ACTIVATION_CHOICES, value=D.activation, label="MLP activation", info=HELP["activation"],
                           elem_id="arch-activation")
        residual = Checkbox(D.residual, label="residual connections", info=HELP["residual"], elem_id="arch-residual")
        mlp = Checkbox(D.mlp, label="MLP", info=HELP["mlp"], elem_id="arch-mlp")
        pos_emb = Checkbox(D.pos_emb, label="position embeddings", info=HELP["pos_emb"], elem_id="arch-pos-emb")
        gr.Markdown(BATCHNORM_NOTE, elem_classes="mg-explain", elem_id="arch-batchnorm-note")
    return group, dict(norm=norm, residual=residual, mlp=mlp, pos_emb=pos_emb, activation=activation)


def standard() -> tuple:
    """The standard GPT's switches, in build_switches' order (a preset starts from them)."""
    return D.norm, D.residual, D.mlp, D.pos_emb, D.activation


def build_layer_plots() -> list[gr.Plot]:
    """The two per-block plots, one above the other (side by side their labels would be too small to read
    at a projector's width), with a line on how to read them."""
    grad = gr.Plot(show_label=False, elem_id="layer-grad-plot", format="png")
    act = gr.Plot(show_label=False, elem_id="layer-act-plot", format="png")
    gr.Markdown(PLOTS_NOTE, elem_classes="mg-explain")
    return [grad, act]


def layer_figures(view) -> tuple:
    """The two per-block figures of a TrainView (placeholders until the first evaluation)."""
    return (layer_plots.layer_grad_figure(view.layers, width=6.0, height=3.0),
            layer_plots.layer_act_figure(view.layers, width=6.0, height=3.0))


class LayerFigures:
    """Redraws the per-block figures only when a new evaluation brought values, at most every `every` s
    while training, and not while a stop is pending; always at the end. (Drawing and encoding the two
    took 0.6-0.8 s of CPU on the busy 2-core build machine: time the trainer and a Stop would wait for.)"""

    def __init__(self, every: float = 5.0):
        self.every, self.drawn, self.at = every, None, float("-inf")

    def __call__(self, view) -> tuple:
        latest = view.layers[-1]["iter"] if view.layers else None
        if view.state != "done" and (latest == self.drawn or view.state != "training"
                                     or time.monotonic() - self.at < self.every):
            return gr.skip(), gr.skip()
        self.drawn, self.at = latest, time.monotonic()
        return layer_figures(view)


def try_button(key: str) -> gr.Button:
    """A pointer from a Concepts experiment to the Train tab: what to watch and a button that sets it up."""
    label, hint, _ = TRY[key]
    gr.Markdown(f"**In the model you train.** {hint}", elem_classes="mg-explain")
    return gr.Button(label, elem_id=f"try-{key}", size="sm")


def link_concepts(tabs: gr.Tabs, buttons: dict, targets: dict, train_tab_id: str = "train"):
    """Wire each Concepts button: fill the Train tab's knobs with its setting, open the Architecture
    group and select the Train tab (its estimate follows the knobs' change events)."""
    outputs = [tabs, targets["accordion"], *(targets[name] for name in TARGETS)]
    for key, button in buttons.items():
        values = TRY[key][2]

        def fill(values=values):
            return (gr.Tabs(selected=train_tab_id), gr.Accordion(open=True), *(values[name] for name in TARGETS))

        button.click(fill, None, outputs, api_visibility="private", queue=False)
