"""The Train tab: data, tokenizer, model and its knobs, presets, the live estimate; Start, Stop,
Continue, Reset and Save; the streamed loss curves, status, samples and run card.

The Architecture group and the per-block plots are built in minigpt/ui/architecture.py.
Endpoints: /estimate, /train, /continue_training, /stop, /reset, /save. Every knob has a
default (the page's value), so each can be called with no arguments. May import gradio,
minigpt's core and minigpt.ui.common / inputs / checkpoints_tab / architecture.
"""

from __future__ import annotations

import gradio as gr

from minigpt import plots
from minigpt.config import TrainConfig
from minigpt.estimate import Estimate
from minigpt.train_spec import SHAKESPEARE, TrainSpec, read_text_file
from minigpt.training_view import TrainView

from .architecture import LayerFigures, build_layer_plots, build_switches, layer_figures, standard
from .checkpoints_tab import save, show_file
from .common import CHEAP, LIMITS, PLAYGROUND, Page, session_of, user_errors
from .inputs import Dropdown, Number, Radio, Slider

RECIPE = TrainConfig()  # the library's defaults: the page starts from the same recipe as the CLI
D = TrainSpec()         # the knobs' starting values (and the endpoints' defaults)
# name -> knob values (n_embd, n_head, n_layer, block_size, dropout, batch_size, lr, budget, amount, model, optimizer);
# nanoGPT's recipe and the lecture's GPU run are AdamW's.
PRESETS = {
    "Quick demo: 2 layers × 64, 30 s": (64, 4, 2, 32, 0.0, RECIPE.batch_size, RECIPE.lr, "seconds", 30, "gpt",
                                        RECIPE.optimizer),
    "Default: 4 layers × 128, 60 s": (128, 4, 4, 64, 0.0, RECIPE.batch_size, RECIPE.lr, "seconds", 60, "gpt",
                                      RECIPE.optimizer),
    "nanoGPT CPU recipe (val ≈ 1.88)": (128, 4, 4, 64, 0.0, 12, 1e-3, "iterations", 2000, "gpt", "adamw"),
    "GPU: 6 layers × 384 (val ≈ 1.47)": (384, 6, 6, 256, 0.2, 64, 1e-3, "iterations", 5000, "gpt", "adamw"),
    "Bigram baseline (val ≈ 2.5)": (128, 4, 4, 64, 0.0, 32, 1e-2, "iterations", 2000, "bigram", "adamw"),
}

MUON_NOTE = ("<span class='mg-muted'>**Muon** orthogonalises the momentum of each weight matrix inside the blocks "
             "(every direction of the update moves about as much) and leaves the embeddings, head and gains to "
             "AdamW, which uses the learning rate above; **AdamW** alone trains everything. Train once with each "
             "(same seed): the loss plot keeps the previous run's validation curve to compare.</span>")

GUIDE = """Validation loss on Tiny Shakespeare with characters:
- untrained: ln 65 ≈ **4.17** — every character equally likely
- bigram baseline: stalls near **2.5** — it only sees the previous character
- the default model (4 × 128) for a minute on a laptop CPU: ≈ **1.8–2.0**, depending on the CPU
- nanoGPT's CPU recipe (4 × 128, context 64, batch 12, 2000 iterations): ≈ **1.88–1.90**
- 6 layers × 384, context 256, dropout 0.2, 5000 iterations on a GPU: ≈ **1.47**

Loss ≈ 2.5 looks like word-shaped noise, ≈ 2.0 spells words, ≈ 1.5 reads like lines of a play.
Validation rising while train falls is overfitting: add dropout, shrink the model, or stop earlier."""


# ---- handlers ------------------------------------------------------------------------------------

def spec_of(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout, batch_size, lr,
            budget, amount, eval_interval, seed, norm=D.norm, residual=D.residual, mlp=D.mlp, pos_emb=D.pos_emb,
            activation=D.activation, optimizer=D.optimizer, muon_lr=D.muon_lr) -> TrainSpec:
    if data == "upload":
        if not upload:
            raise ValueError("upload a UTF-8 .txt file first (or choose Tiny Shakespeare)")
        text, data = read_text_file(upload, LIMITS), "text"
    elif data == "paste":
        data = "text"
    elif data != SHAKESPEARE:
        raise ValueError(f"data must be shakespeare, paste or upload, got {data!r}")
    return TrainSpec(data=data, text=text or "", tokenizer=tokenizer, model=model, n_embd=n_embd, n_head=n_head,
                     n_layer=n_layer, block_size=block_size, dropout=dropout, batch_size=batch_size,
                     lr=lr if lr is not None else 0.0, budget=budget, amount=amount if amount is not None else 0,
                     eval_interval=eval_interval, seed=seed if seed is not None else 0, norm=norm, residual=residual,
                     mlp=mlp, pos_emb=pos_emb, activation=activation, optimizer=optimizer,
                     muon_lr=muon_lr if muon_lr is not None else 0.0)


def train_outputs(view, s, layers=layer_figures):
    """The outputs of every Train-tab action; `layers(view)` draws (or skips) the two per-block plots."""
    sample = f"— sample at iteration {view.sample_iter} —\n{view.sample}" if view.sample else ""
    card = view.card or (s.current().card if s.owned is not None else {})
    info = s.info()
    if view.state == "done":  # the run's last view: its wrap-up may still be going, but the model is final
        info["training_now"] = False
    return (plots.loss_frame(view.steps, view.evals, view.ghost, view.ghost_optimizer), plots.status_html(view),
            sample, card,
            plots.model_html(info), *layers(view))


@user_errors
def estimate(data=D.data, text=D.text, upload=None, tokenizer=D.tokenizer, model=D.model, n_embd=D.n_embd,
             n_head=D.n_head, n_layer=D.n_layer, block_size=D.block_size, dropout=D.dropout,
             batch_size=D.batch_size, lr=D.lr, budget=D.budget, amount=D.amount, eval_interval=D.eval_interval,
             seed=D.seed, norm=D.norm, residual=D.residual, mlp=D.mlp, pos_emb=D.pos_emb, activation=D.activation,
             optimizer=D.optimizer, muon_lr=D.muon_lr):
    """Parameters, memory and time of the knobs' settings, or why they cannot work (Start is disabled then)."""
    try:
        spec = spec_of(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout,
                       batch_size, lr, budget, amount, eval_interval, seed, norm, residual, mlp, pos_emb, activation,
                       optimizer, muon_lr)
        est = PLAYGROUND.estimate(spec)
    except ValueError as e:
        est = Estimate(ok=False, error=str(e))
    return plots.estimate_html(est), gr.Button(interactive=est.ok)


@user_errors
def train(data=D.data, text=D.text, upload=None, tokenizer=D.tokenizer, model=D.model, n_embd=D.n_embd,
          n_head=D.n_head, n_layer=D.n_layer, block_size=D.block_size, dropout=D.dropout, batch_size=D.batch_size,
          lr=D.lr, budget=D.budget, amount=D.amount, eval_interval=D.eval_interval, seed=D.seed, norm=D.norm,
          residual=D.residual, mlp=D.mlp, pos_emb=D.pos_emb, activation=D.activation, optimizer=D.optimizer,
          muon_lr=D.muon_lr, request: gr.Request = None, progress=gr.Progress()):
    """Train a fresh model in this session, streaming the loss curves, progress and samples."""
    s = session_of(request)
    spec = spec_of(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout, batch_size,
                   lr, budget, amount, eval_interval, seed, norm, residual, mlp, pos_emb, activation, optimizer, muon_lr)
    yield from _stream(s, s.train(spec), progress)


@user_errors
def continue_training(data=D.data, text=D.text, upload=None, tokenizer=D.tokenizer, model=D.model, n_embd=D.n_embd,
                      n_head=D.n_head, n_layer=D.n_layer, block_size=D.block_size, dropout=D.dropout,
                      batch_size=D.batch_size, lr=D.lr, budget=D.budget, amount=D.amount,
                      eval_interval=D.eval_interval, seed=D.seed, norm=D.norm, residual=D.residual, mlp=D.mlp,
                      pos_emb=D.pos_emb, activation=D.activation, optimizer=D.optimizer, muon_lr=D.muon_lr,
                      request: gr.Request = None, progress=gr.Progress()):
    """Resume this session's run (or fine-tune a copy of the loaded model) with the budget and learning rate;
    the model keeps its shape and architecture switches."""
    s = session_of(request)
    spec = spec_of(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout, batch_size,
                   lr, budget, amount, eval_interval, seed, norm, residual, mlp, pos_emb, activation, optimizer, muon_lr)
    yield from _stream(s, s.train(spec, resume=True), progress)


def _stream(s, views, progress):
    layers = LayerFigures()
    for view in views:
        waiting = view.state == "waiting"
        progress(view.progress, desc="waiting for a training slot" if waiting else f"iteration {view.iter}")
        yield train_outputs(view, s, layers)


@user_errors
def stop(request: gr.Request = None):
    """Stop this session's training: at once the iteration it stopped at (the model is kept), then,
    once measured, the full-validation loss as a second update."""
    s = session_of(request)
    first = s.stop_soon()
    yield train_outputs(first, s, layers=lambda view: (gr.skip(), gr.skip()))  # at once: the plots come next
    if first.state in ("stopped", "stopping", "waiting"):
        yield train_outputs(s.stop(wait=120.0), s)


@user_errors
def reset(request: gr.Request = None):
    """Forget this session's run and model: back to the shipped model."""
    s = session_of(request)
    s.reset()
    return train_outputs(s.view, s)


def choose_data(data):
    return gr.Textbox(visible=data == "paste"), gr.File(visible=data == "upload")


def apply_preset(name):
    n_embd, n_head, n_layer, block, dropout, batch, lr, budget, amount, model, optimizer = PRESETS[name]
    return (min(n_embd, LIMITS.max_embd), min(n_head, LIMITS.max_heads), min(n_layer, LIMITS.max_layers),
            min(block, LIMITS.max_context), dropout, min(batch, LIMITS.max_batch), lr, budget,
            amount if budget == "iterations" else min(amount, LIMITS.max_train_seconds), model, optimizer)


# ---- layout and wiring ---------------------------------------------------------------------------

def build(page: Page, tab: gr.Tab) -> dict:
    """Lay out the Train tab inside `tab`, wire it; returns its knobs and outputs."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            data = Radio([("Tiny Shakespeare", SHAKESPEARE), ("Paste text", "paste"), ("Upload .txt", "upload")],
                         value=D.data, label="Data")
            text = gr.Textbox(D.text, label="Your text", lines=4, max_lines=8, visible=False,
                              placeholder="Paste a few kilobytes of text or more…")
            upload = gr.File(label=f"UTF-8 text file (max {LIMITS.max_upload_mb:g} MB)", file_types=[".txt"],
                             type="filepath", visible=False, height=120)
            with gr.Row():
                tokenizer = Radio([("characters", "char"), ("GPT-2 BPE", "gpt2")], value=D.tokenizer,
                                  label="Tokenizer")
                model = Radio([("GPT", "gpt"), ("bigram", "bigram")], value=D.model, label="Model")
            preset = Dropdown(list(PRESETS), value="Default: 4 layers × 128, 60 s", label="Preset")
            with gr.Row():
                n_embd = Slider(16, LIMITS.max_embd, value=D.n_embd, step=16, label="embedding size", elem_id="n-embd")
                n_head = Slider(1, LIMITS.max_heads, value=D.n_head, step=1, label="heads", elem_id="n-head")
            with gr.Row():
                n_layer = Slider(1, LIMITS.max_layers, value=D.n_layer, step=1, label="layers", elem_id="n-layer")
                block_size = Slider(8, LIMITS.max_context, value=D.block_size, step=8, label="context length",
                                    elem_id="block-size")
            with gr.Row():
                dropout = Slider(0.0, 0.5, value=D.dropout, step=0.05, label="dropout", elem_id="dropout")
                batch_size = Slider(1, LIMITS.max_batch, value=D.batch_size, step=1, label="batch size",
                                    elem_id="batch-size")
            with gr.Row():
                lr = Number(D.lr, label="learning rate", minimum=1e-6, maximum=1.0, step=1e-4, elem_id="lr")
                budget = Radio(["seconds", "iterations"], value=D.budget, label="Budget in")
                amount = Number(D.amount, label="budget", minimum=1, precision=0, elem_id="amount")
            with gr.Row():
                eval_interval = Slider(10, 1000, value=D.eval_interval, step=10, label="evaluate every … steps",
                                       elem_id="eval-interval")
                seed = Number(D.seed, label="seed", precision=0, minimum=0)
            with gr.Row():
                optimizer = Radio([("Muon", "muon"), ("AdamW", "adamw")], value=D.optimizer, label="Optimizer")
                muon_lr = Number(D.muon_lr, label="Muon learning rate", minimum=1e-6, maximum=10.0, step=1e-3,
                                 elem_id="muon-lr")
            gr.Markdown(MUON_NOTE)
            arch_group, switches = build_switches()
            gr.Markdown(f"<span class='mg-muted'>Limits here: ≤ {LIMITS.max_params / 1e6:g} M parameters, "
                        f"≤ {LIMITS.max_train_seconds:g} s a run, {LIMITS.max_training_jobs} training job(s) at "
                        f"once; set with the MINIGPT_MAX_* variables (see below).</span>")
            with gr.Accordion("Limits on this server", open=False):
                gr.Code(LIMITS.describe(), language="shell", show_line_numbers=False, interactive=False)
        with gr.Column(scale=3, min_width=480):
            estimate_box = gr.HTML(elem_id="estimate")
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", elem_id="start-btn", min_width=80)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", min_width=80)
                continue_btn = gr.Button("Continue", elem_id="continue-btn", min_width=80)
                reset_btn = gr.Button("Reset", elem_id="reset-btn", min_width=80)
                save_btn = gr.Button("Save", elem_id="save-btn", min_width=80)
            saved = gr.File(label="Checkpoint", interactive=False, visible=False, height=80, elem_id="saved-file")
            status = gr.HTML(plots.status_html(TrainView()), elem_id="train-status")
            loss_plot = gr.LinePlot(None, x="step", y="loss", color="series",
                                    color_map=plots.LOSS_COLOURS, x_title="iteration", y_title="loss",
                                    show_label=False, height=300, elem_id="loss-plot", buttons=["fullscreen", "export"])
            layer_plots = build_layer_plots()
            sample = gr.Textbox(label="Latest sample (temperature 0.8)", lines=7, max_lines=12, interactive=False,
                                elem_id="train-sample")
            with gr.Accordion("What to expect", open=True):
                gr.Markdown(GUIDE)
            with gr.Accordion("Run card (stored in the checkpoint: enough to repeat the run)", open=False):
                card = gr.JSON(label="Run card")
    knobs = [data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout, batch_size, lr,
             budget, amount, eval_interval, seed, *switches.values(), optimizer, muon_lr]
    shape = [n_embd, n_head, n_layer, block_size, dropout, batch_size, lr, budget, amount, model, optimizer]
    outputs = [loss_plot, status, sample, card, page.badge, *layer_plots]

    gr.on([x.change for x in knobs], estimate, knobs, [estimate_box, start_btn],
          api_name="estimate", queue=False, show_progress="hidden", **CHEAP)
    page.demo.load(estimate, knobs, [estimate_box, start_btn], api_name="estimate_on_load",
                   api_visibility="private", queue=False, **CHEAP)
    data.change(choose_data, data, [text, upload], api_visibility="private", queue=False)
    preset.input(apply_preset, preset, shape, api_visibility="private", queue=False)
    # A preset is a standard GPT (and the bigram preset could not take switches at all).
    preset.input(standard, None, list(switches.values()), api_visibility="private", queue=False)
    # No limit here: the Playground's TrainingQueue runs max_training_jobs at a time, and a run waiting for
    # its turn streams its place and estimated wait (a closed tab leaves the queue).
    jobs = dict(concurrency_limit=None, concurrency_id="train", show_progress="hidden")
    train_ev = start_btn.click(train, knobs, outputs, api_name="train", **jobs)
    cont_ev = continue_btn.click(continue_training, knobs, outputs, api_name="continue_training", **jobs)
    # /stop sets this session's stop flag (works from gradio_client too) and answers at once; cancels=
    # also drops a queued job. Its own unlimited pool: it never waits behind a training.
    stop_btn.click(stop, None, outputs, api_name="stop", concurrency_limit=None, show_progress="hidden",
                   cancels=[train_ev, cont_ev])
    reset_btn.click(reset, None, outputs, api_name="reset", concurrency_limit=None)
    save_btn.click(save, None, saved, api_name="save", concurrency_limit=4, concurrency_id="infer").success(
        show_file, None, saved, api_visibility="private", queue=False)
    return dict(knobs=knobs, start=start_btn, stop=stop_btn, status=status, plot=loss_plot,
                arch_targets=dict(accordion=arch_group, model=model, n_layer=n_layer, eval_interval=eval_interval,
                                  **switches))
