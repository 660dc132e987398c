"""minigpt playground: the Gradio page (layout and wiring only; the work is in minigpt/).

    python app.py            # then open http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT honoured)

Each tab's handlers are thin: read the inputs, call one method of the user's `Session`
(minigpt/session.py), turn the result into component values with minigpt/plots.py. Every user
has their own session (keyed by Gradio's session hash); the shipped model is shared read-only.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import hashlib
import importlib.util
import inspect
import os
import shutil
import tempfile
import uuid
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # figures are rendered off-screen, in worker threads

import gradio as gr  # noqa: E402

from minigpt import __version__, plots  # noqa: E402
from minigpt import experiment_plots, experiments  # noqa: E402
from minigpt.device import pick_precision  # noqa: E402
from minigpt.limits import Limits, check_int, check_text  # noqa: E402
from minigpt.sampling import STRATEGIES, SamplingConfig  # noqa: E402
from minigpt.session import (Estimate, Playground, TrainSpec, TrainView, read_text_file,  # noqa: E402
                             sampling_columns, tokenize)
from minigpt.train import TrainConfig  # noqa: E402
from ui_inputs import CheckboxGroup, Dropdown, Number, Radio, Slider  # noqa: E402


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas (M_ARENA_MAX). By default each new thread may get an arena of its
    own (up to 8 per core), and a server's many worker threads then fragment memory: measured with
    8 clients a round, RSS rose ~25 MB every round (648 → 772 MB over six); with 2 arenas it stayed
    flat. Returns False where there is no glibc (macOS, Windows, musl): nothing to do there."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-8, n) == 1  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        return False


limit_malloc_arenas()  # before the worker threads exist
LIMITS = Limits.from_env()
PLAYGROUND = Playground(LIMITS)  # the one registry of sessions (keyed by session hash) and the shared model
SAVE_ROOT = Path(tempfile.gettempdir()) / "minigpt-app"

RECIPE = TrainConfig()  # the library's defaults: the page starts from the same recipe as the CLI
PRESETS = {  # name -> knob values (n_embd, n_head, n_layer, block_size, dropout, batch_size, lr, budget, amount, model)
    "Quick demo: 2 layers × 64, 30 s": (64, 4, 2, 32, 0.0, RECIPE.batch_size, RECIPE.lr, "seconds", 30, "gpt"),
    "Default: 4 layers × 128, 60 s": (128, 4, 4, 64, 0.0, RECIPE.batch_size, RECIPE.lr, "seconds", 60, "gpt"),
    "nanoGPT CPU recipe (val ≈ 1.88)": (128, 4, 4, 64, 0.0, 12, 1e-3, "iterations", 2000, "gpt"),
    "GPU: 6 layers × 384 (val ≈ 1.47)": (384, 6, 6, 256, 0.2, 64, 1e-3, "iterations", 5000, "gpt"),
    "Bigram baseline (val ≈ 2.5)": (128, 4, 4, 64, 0.0, 32, 1e-2, "iterations", 2000, "bigram"),
}

SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace"]
STRATEGY_CHOICES = ("greedy", "multinomial", "low temperature", "high temperature", "top-k", "top-p")

GUIDE = """Validation loss on Tiny Shakespeare with characters:
- untrained: ln 65 ≈ **4.17** — every character equally likely
- bigram baseline: stalls near **2.5** — it only sees the previous character
- the default model (4 × 128) for a minute on a laptop CPU: ≈ **1.8–2.0**, depending on the CPU
- nanoGPT's CPU recipe (4 × 128, context 64, batch 12, 2000 iterations): ≈ **1.88–1.90**
- 6 layers × 384, context 256, dropout 0.2, 5000 iterations on a GPU: ≈ **1.47**

Loss ≈ 2.5 looks like word-shaped noise, ≈ 2.0 spells words, ≈ 1.5 reads like lines of a play.
Validation rising while train falls is overfitting: add dropout, shrink the model, or stop earlier."""


# ---- plumbing -------------------------------------------------------------------------------------

def user_errors(fn):
    """Turn a bad input (ValueError: also CheckpointError, DataError) or a missing file into a message."""
    def message(e):
        return gr.Error(str(e) or type(e).__name__)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except (ValueError, OSError) as e:
                raise message(e) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, OSError) as e:
            raise message(e) from None
    return call


def session_of(request: gr.Request | None):
    key = getattr(request, "session_hash", None) or f"anonymous-{uuid.uuid4()}"
    return PLAYGROUND.session(key)


def spec_of(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout, batch_size, lr,
            budget, amount, eval_interval, seed) -> TrainSpec:
    if data == "upload":
        if not upload:
            raise ValueError("upload a UTF-8 .txt file first (or choose Tiny Shakespeare)")
        text, data = read_text_file(upload, LIMITS), "text"
    elif data == "paste":
        data = "text"
    elif data != "shakespeare":
        raise ValueError(f"data must be shakespeare, paste or upload, got {data!r}")
    return TrainSpec(data=data, text=text or "", tokenizer=tokenizer, model=model, n_embd=n_embd, n_head=n_head,
                     n_layer=n_layer, block_size=block_size, dropout=dropout, batch_size=batch_size,
                     lr=lr if lr is not None else 0.0, budget=budget, amount=amount if amount is not None else 0,
                     eval_interval=eval_interval, seed=seed if seed is not None else 0)


def train_outputs(view, s):
    sample = f"— sample at iteration {view.sample_iter} —\n{view.sample}" if view.sample else ""
    card = view.card or (s.current().card if s.owned is not None else {})
    return (plots.loss_frame(view.steps, view.evals), plots.status_html(view), sample, card,
            plots.model_html(s.info()))


def save_dir(key: str) -> Path:
    folder = SAVE_ROOT / hashlib.sha1(key.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---- Train ---------------------------------------------------------------------------------------

@user_errors
def estimate(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout, batch_size, lr,
             budget, amount, eval_interval, seed):
    """Parameters, memory and time of the knobs' settings, or why they cannot work (Start is disabled then)."""
    try:
        spec = spec_of(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout,
                       batch_size, lr, budget, amount, eval_interval, seed)
        est = PLAYGROUND.estimate(spec)
    except ValueError as e:
        est = Estimate(ok=False, error=str(e))
    return plots.estimate_html(est), gr.Button(interactive=est.ok)


@user_errors
def train(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout, batch_size, lr,
          budget, amount, eval_interval, seed, request: gr.Request, progress=gr.Progress()):
    """Train a fresh model in this session, streaming the loss curves, progress and samples."""
    s = session_of(request)
    spec = spec_of(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout, batch_size,
                   lr, budget, amount, eval_interval, seed)
    yield from _stream(s, s.train(spec), progress)


@user_errors
def continue_training(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout,
                      batch_size, lr, budget, amount, eval_interval, seed, request: gr.Request,
                      progress=gr.Progress()):
    """Resume this session's run (or fine-tune a copy of the loaded model) with the budget and learning rate."""
    s = session_of(request)
    spec = spec_of(data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout, batch_size,
                   lr, budget, amount, eval_interval, seed)
    yield from _stream(s, s.train(spec, resume=True), progress)


def _stream(s, views, progress):
    for view in views:
        progress(view.progress, desc=f"iteration {view.iter}")
        yield train_outputs(view, s)


@user_errors
def stop(request: gr.Request):
    """Stop this session's training (within a step); the model is kept. Returns the final state."""
    s = session_of(request)
    return train_outputs(s.stop(), s)


@user_errors
def reset(request: gr.Request):
    """Forget this session's run and model: back to the shipped model."""
    s = session_of(request)
    s.reset()
    return train_outputs(s.view, s)


@user_errors
def save(request: gr.Request):
    """The current model as a .safetensors checkpoint (weights, tokenizer, run card)."""
    s = session_of(request)
    return str(s.save(save_dir(s.key)))


def show():
    return gr.File(visible=True)


def choose_data(data):
    return gr.Textbox(visible=data == "paste"), gr.File(visible=data == "upload")


def apply_preset(name):
    n_embd, n_head, n_layer, block, dropout, batch, lr, budget, amount, model = PRESETS[name]
    return (min(n_embd, LIMITS.max_embd), min(n_head, LIMITS.max_heads), min(n_layer, LIMITS.max_layers),
            min(block, LIMITS.max_context), dropout, min(batch, LIMITS.max_batch), lr, budget,
            amount if budget == "iterations" else min(amount, LIMITS.max_train_seconds), model)


# ---- Generate ------------------------------------------------------------------------------------

def _summary(columns):
    return [{"name": c["name"], "sampling": c["sampling"], "text": c["text"], "tokens": c["n"],
             "mean_loglik": round(c["mean_loglik"], 4), "perplexity": round(c["perplexity"], 3),
             "repeats": round(c["repeats"], 3), "tokens_per_s": round(c["tokens_per_s"], 1)} for c in columns]


@user_errors
def compare_sampling(prompt, tokens, seed, strategies, low_t, high_t, top_k, top_p, colour, use_cache,
                     request: gr.Request):
    """Greedy, multinomial, temperatures (and top-k / top-p) side by side from the same prompt and seed."""
    s = session_of(request)
    chosen = set(strategies or [])
    unknown = chosen - set(STRATEGY_CHOICES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; choose from {', '.join(STRATEGY_CHOICES)}")
    cols = sampling_columns("greedy" in chosen, "multinomial" in chosen,
                            low_t if "low temperature" in chosen else None,
                            high_t if "high temperature" in chosen else None,
                            top_k if "top-k" in chosen else None, top_p if "top-p" in chosen else None)
    warn_long(s, prompt)
    columns = []
    for columns in s.compare(prompt, tokens, seed, cols, use_cache=bool(use_cache)):
        if not all(c["done"] for c in columns):
            yield plots.compare_html(columns, colour), gr.skip(), gr.skip(), gr.skip()
    names = [c["name"] for c in columns]
    n = max(c["n"] for c in columns)
    yield (plots.compare_html(columns, colour), _summary(columns),
           gr.Dropdown(choices=names, value=names[0]), gr.Slider(maximum=n))


def warn_long(s, prompt):
    note = s.prompt_note(prompt)
    if note:
        gr.Warning(note)


def recolour(colour, request: gr.Request):
    s = session_of(request)
    return plots.compare_html(s.last_columns, colour)


@user_errors
def next_token_distribution(column, step, request: gr.Request):
    """The next-token distribution at one step of the last comparison, and the same logits at T = 0.5, 1, 2."""
    s = session_of(request)
    info = s.next_token(column, step)
    note = (f"After …`{plots.show_token(info['context'][-40:])}` the model gave these probabilities; "
            f"**{info['column']}** chose **`{plots.show_token(info['chosen_piece'])}`** (rank {info['chosen_rank']}). "
            + ("*The model changed since this comparison: the bars are the current model's.*" if info["changed"] else ""))
    return plots.next_token_figure(info), note


@user_errors
def generate(prompt, tokens, strategy, temperature, top_k, top_p, seed, use_cache, request: gr.Request):
    """One strategy, streamed; the measured tokens/s with the KV cache on and off are kept and plotted."""
    s = session_of(request)
    sampling = SamplingConfig(strategy, temperature if temperature else 1.0, int(top_k) if top_k else None,
                              top_p if top_p and top_p < 1 else None)
    warn_long(s, prompt)
    stats = {}
    for text, stats in s.generate(prompt, tokens, sampling, seed, use_cache=bool(use_cache)):
        if not stats["done"]:
            yield (prompt or "") + text, gr.skip(), gr.skip()
    words = (f"{stats['tokens']} tokens in {stats['seconds']:.2f} s = **{stats['tokens_per_s']:.0f} tokens/s** "
             f"with the KV cache **{'on' if use_cache else 'off'}** · perplexity {stats['perplexity']:.2f}")
    if use_cache and stats["tokens"] > stats["cache_full_after"]:
        words += (f"  \nThe cache holds the model's context of {stats['context']} tokens: it was full after "
                  f"{stats['cache_full_after']} new tokens, and from then on each token recomputes the last "
                  f"{stats['context']}, as without the cache. Generate fewer tokens to see its full effect.")
    yield (prompt or "") + text, words, plots.cache_figure(s.cache_speed)


# ---- Attention, Tokenizer, Checkpoints -----------------------------------------------------------

@user_errors
def attention(text, layer, head, request: gr.Request):
    """Attention weights of the current model for `text` (empty: the last prompt), one head or all."""
    s = session_of(request)
    a = s.attention(text)
    layer = check_int("layer", layer if layer not in (None, "") else 0, 0, a["n_layer"] - 1)
    if head in (None, "", "all"):
        fig = plots.attention_grid(a["tokens"], a["weights"][layer], layer)
    else:
        try:
            h = check_int("head", head, 0, a["n_head"] - 1)
        except ValueError:
            raise ValueError(f"head must be 'all' or between 0 and {a['n_head'] - 1}, got {head!r}") from None
        fig = plots.attention_figure(a["tokens"], a["weights"][layer, h], layer, h)
    note = f"{len(a['tokens'])} tokens"
    if a["cropped"]:
        why = (f"the model's context is {a['block_size']}" if a["block_size"] <= a["shown_max"]
               else f"the view shows at most {a['shown_max']}")
        note += f" (the last {len(a['tokens'])} of the text: {why})"
    return fig, note


@user_errors
def attention_scores(text, request: gr.Request):
    """Per layer: the spread of the current model's q·k scores over `text`, with and without 1/sqrt(d)."""
    result = session_of(request).score_scale(text)
    return experiment_plots.model_scores_figure(result), experiments.tables_markdown(result.tables())


def attention_choices(request: gr.Request):
    try:
        cfg = session_of(request).current().model.config
    except ValueError:
        return gr.skip(), gr.skip()
    n_layer, n_head = (cfg.n_layer, cfg.n_head) if cfg.model == "gpt" else (1, 1)
    return (gr.Dropdown(choices=[(f"layer {i}", i) for i in range(n_layer)], value=0),
            gr.Dropdown(choices=[("all heads", "all")] + [(f"head {i}", str(i)) for i in range(n_head)], value="all"))


@user_errors
def tokenize_text(text):
    """The text split by the char tokenizer (Tiny Shakespeare's 65 symbols) and by GPT-2 BPE (50,257)."""
    text = check_text("text", text, LIMITS.max_prompt_chars)
    vocab = "".join(sorted(set(PLAYGROUND.shakespeare())))
    r = tokenize(text, vocab)
    ids = {"char": {"count": r["char"]["count"], "vocab_size": r["char"]["vocab_size"],
                    "ids": [i for _, i in r["char"]["tokens"]]},
           "gpt2": {"count": r["gpt2"]["count"], "vocab_size": r["gpt2"]["vocab_size"],
                    "ids": [i for _, i in r["gpt2"]["tokens"]]}}
    return plots.tokens_html(r), ids


@user_errors
def load_checkpoint(file, request: gr.Request):
    """Upload a .safetensors checkpoint: validated by the loader; a bad file leaves the current model as it was."""
    s = session_of(request)
    info = s.load(file)
    return info, plots.model_markdown(info), plots.model_html(info)


@user_errors
def load_shipped(request: gr.Request):
    """Make the shipped pretrained model the current one again."""
    s = session_of(request)
    info = s.load_shipped()
    return info, plots.model_markdown(info), plots.model_html(info)


@user_errors
def model_info(request: gr.Request):
    """Config, parameter count, device, dtype and training summary (run card) of the current model."""
    info = session_of(request).info()
    return info, plots.model_markdown(info), plots.model_html(info)


def on_load(request: gr.Request):
    try:
        return plots.model_html(session_of(request).info())
    except ValueError as e:  # no shipped model: the page still works, Train makes one
        return f'<div class="mg-model">No model yet ({e}).</div>'


def on_unload(request: gr.Request):
    key = getattr(request, "session_hash", None)
    if key:
        PLAYGROUND.drop(key)
        shutil.rmtree(SAVE_ROOT / hashlib.sha1(key.encode()).hexdigest()[:16], ignore_errors=True)
        gc.collect()


# ---- layout ----------------------------------------------------------------------------------------

def _device_line() -> str:
    dev = PLAYGROUND.device
    small, wide = pick_precision(dev, "auto", 128).dtype, pick_precision(dev, "auto", 384).dtype
    dtype = small if small == wide else f"{small} (bfloat16 from 256 wide)"
    import torch
    return f"running on <b>{dev}</b> · training in {dtype} · torch {torch.__version__} · minigpt {__version__}"


def build_train_tab():
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            data = Radio([("Tiny Shakespeare", "shakespeare"), ("Paste text", "paste"), ("Upload .txt", "upload")],
                         value="shakespeare", label="Data")
            text = gr.Textbox(label="Your text", lines=4, max_lines=8, visible=False,
                              placeholder="Paste a few kilobytes of text or more…")
            upload = gr.File(label=f"UTF-8 text file (max {LIMITS.max_upload_mb:g} MB)", file_types=[".txt"],
                             type="filepath", visible=False, height=120)
            with gr.Row():
                tokenizer = Radio([("characters", "char"), ("GPT-2 BPE", "gpt2")], value="char", label="Tokenizer")
                model = Radio([("GPT", "gpt"), ("bigram", "bigram")], value="gpt", label="Model")
            preset = Dropdown(list(PRESETS), value="Default: 4 layers × 128, 60 s", label="Preset")
            with gr.Row():
                n_embd = Slider(16, LIMITS.max_embd, value=128, step=16, label="embedding size", elem_id="n-embd")
                n_head = Slider(1, LIMITS.max_heads, value=4, step=1, label="heads", elem_id="n-head")
            with gr.Row():
                n_layer = Slider(1, LIMITS.max_layers, value=4, step=1, label="layers", elem_id="n-layer")
                block_size = Slider(8, LIMITS.max_context, value=64, step=8, label="context length",
                                    elem_id="block-size")
            with gr.Row():
                dropout = Slider(0.0, 0.5, value=0.0, step=0.05, label="dropout", elem_id="dropout")
                batch_size = Slider(1, LIMITS.max_batch, value=RECIPE.batch_size, step=1, label="batch size",
                                    elem_id="batch-size")
            with gr.Row():
                lr = Number(RECIPE.lr, label="learning rate", minimum=1e-6, maximum=1.0, step=1e-4, elem_id="lr")
                budget = Radio(["seconds", "iterations"], value="seconds", label="Budget in")
                amount = Number(60, label="budget", minimum=1, precision=0, elem_id="amount")
            with gr.Row():
                eval_interval = Slider(10, 1000, value=100, step=10, label="evaluate every … steps",
                                       elem_id="eval-interval")
                seed = Number(1337, label="seed", precision=0, minimum=0)
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
            sample = gr.Textbox(label="Latest sample (temperature 0.8)", lines=7, max_lines=12, interactive=False,
                                elem_id="train-sample")
            with gr.Accordion("What to expect", open=True):
                gr.Markdown(GUIDE)
            with gr.Accordion("Run card (stored in the checkpoint: enough to repeat the run)", open=False):
                card = gr.JSON(label="Run card")
    knobs = [data, text, upload, tokenizer, model, n_embd, n_head, n_layer, block_size, dropout, batch_size, lr,
             budget, amount, eval_interval, seed]
    return dict(knobs=knobs, data=data, text=text, upload=upload, preset=preset, model=model,
                shape=[n_embd, n_head, n_layer, block_size, dropout, batch_size, lr, budget, amount, model],
                estimate=estimate_box, start=start_btn, stop=stop_btn, cont=continue_btn, reset=reset_btn,
                save=save_btn, status=status, plot=loss_plot, sample=sample, saved=saved, card=card)


def build_generate_tab():
    with gr.Row():
        prompt = gr.Textbox("ROMEO:", label="Prompt", lines=2, max_lines=4, scale=4, elem_id="prompt")
        tokens = Slider(1, LIMITS.max_new_tokens, value=200, step=1, label="tokens", scale=2)
        seed = Number(1337, label="seed", precision=0, minimum=0, scale=1, min_width=100)
        compare_btn = gr.Button("Compare", variant="primary", scale=1, min_width=120, elem_id="compare-btn")
    with gr.Row(equal_height=True):
        strategies = CheckboxGroup(list(STRATEGY_CHOICES), value=list(STRATEGY_CHOICES[:4]), label="Strategies",
                                   scale=3, elem_id="strategies")
        colour = gr.Checkbox(True, label="colour tokens by probability", scale=1)
        use_cache = gr.Checkbox(True, label="KV cache", scale=1, min_width=100)
    with gr.Row():
        low_t = Slider(0.05, 1.0, value=0.5, step=0.05, label="low T")
        high_t = Slider(1.0, 5.0, value=2.0, step=0.1, label="high T")
        top_k = Slider(1, 100, value=10, step=1, label="k (top-k)")
        top_p = Slider(0.05, 1.0, value=0.9, step=0.05, label="p (top-p)")
    out = gr.HTML(plots.compare_html([]), elem_id="compare-out")
    with gr.Accordion("Numbers (JSON)", open=False):
        summary = gr.JSON(label="comparison")
    gr.Markdown("### Next-token distribution at one step")
    with gr.Row():
        column = Dropdown([], label="strategy", scale=2, allow_custom_value=True)
        step = Slider(1, 200, value=1, step=1, label="step", scale=3)
    nt_note = gr.Markdown()
    nt_plot = gr.Plot(label="next-token distribution", show_label=False, elem_id="next-token-plot")
    with gr.Accordion("Generate one text — and what the KV cache buys", open=False):
        with gr.Row(equal_height=True):
            strategy = Dropdown(list(STRATEGIES), value="temperature", label="strategy", min_width=140)
            temperature = Slider(0.05, 5.0, value=0.8, step=0.05, label="temperature", min_width=140)
            one_k = Number(0, label="top-k (0 = off)", precision=0, minimum=0, min_width=100)
            one_p = Number(1.0, label="top-p (1 = off)", minimum=0.01, maximum=1.0, min_width=100)
            gen_btn = gr.Button("Generate", min_width=100, elem_id="generate-btn")
        gen_out = gr.Textbox(label="Text", lines=6, max_lines=10, interactive=False)
        gen_stats = gr.Markdown("Switch **KV cache** (above) on and off and generate again to compare speeds.")
        cache_plot = gr.Plot(label="tokens per second", show_label=False, elem_id="cache-plot")
    return dict(prompt=prompt, tokens=tokens, seed=seed, compare=compare_btn,
                switches=[strategies, low_t, high_t, top_k, top_p, colour, use_cache],
                colour=colour, use_cache=use_cache, out=out, summary=summary, column=column, step=step,
                nt_note=nt_note, nt_plot=nt_plot, one=[strategy, temperature, one_k, one_p], gen=gen_btn,
                gen_out=gen_out, gen_stats=gen_stats, cache_plot=cache_plot)


def build_attention_tab():
    with gr.Row():
        text = gr.Textbox(label="Text (empty: the last prompt)", lines=2, scale=4,
                          value="ROMEO:\nBut soft, what light through yonder window breaks?")
        # Choices follow the current model (refreshed when the tab opens); the handler checks the range.
        layer = Dropdown([("layer 0", 0)], value=0, label="layer", scale=1, allow_custom_value=True)
        head = Dropdown([("all heads", "all")], value="all", label="head", scale=1, allow_custom_value=True)
        btn = gr.Button("Show attention", variant="primary", scale=1, elem_id="attention-btn")
    note = gr.Markdown("Rows are the tokens looking (queries), columns the tokens looked at (keys). "
                       "A token may only attend to itself and earlier tokens: the hatched triangle is masked out.")
    plot = gr.Plot(label="attention", show_label=False, elem_id="attention-plot")
    with gr.Accordion("Why divide by √d? The scores inside this model", open=False):
        gr.Markdown(experiments.EXPLANATIONS["model_scores"] + " (The Concepts tab shows the same with random "
                    "vectors.)")
        scores_btn = gr.Button("Measure the scores of the text above", elem_id="scores-btn")
        scores_plot = gr.Plot(label="scores", show_label=False, elem_id="scores-plot")
        scores_numbers = gr.Markdown(elem_id="scores-numbers")
    return dict(text=text, layer=layer, head=head, btn=btn, note=note, plot=plot, scores_btn=scores_btn,
                scores_plot=scores_plot, scores_numbers=scores_numbers)


def build_tokenizer_tab():
    text = gr.Textbox("ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun — naïve café.",
                      label="Text", lines=3, elem_id="tok-text")
    out = gr.HTML(elem_id="tok-out")
    with gr.Accordion("Token ids (JSON)", open=False):
        ids = gr.JSON(label="ids")
    gr.Markdown("The char model's vocabulary is the **65** distinct characters of Tiny Shakespeare: tiny, so each "
                "token carries little and sequences are long. GPT-2's BPE has **50,257** tokens learned from web "
                "text: common words are one token, rare ones split into pieces, and any text can be encoded.")
    return dict(text=text, out=out, ids=ids)


def build_checkpoints_tab():
    gr.Markdown("The shipped model (`checkpoints/shakespeare-char.safetensors`) is loaded at start so Generate "
                "works at once. Upload a `.safetensors` file written by minigpt (`python -m minigpt train` or **Save**): "
                "it is checked before anything is built, and a bad file leaves the current model as it was.")
    with gr.Row():
        with gr.Column(scale=2):
            upload = gr.File(label=f"Upload a checkpoint (.safetensors, max {LIMITS.max_upload_mb:g} MB)",
                             file_types=[".safetensors"], type="filepath", height=200, elem_id="ckpt-upload")
            shipped_btn = gr.Button("Load the shipped model", elem_id="shipped-btn")
            with gr.Row():
                save_btn = gr.Button("Save", elem_id="save2-btn", min_width=80)
                info_btn = gr.Button("Refresh", elem_id="info-btn", min_width=80)
            saved = gr.File(label="Saved checkpoint", interactive=False, visible=False, height=80)
        with gr.Column(scale=3):
            summary = gr.Markdown(elem_id="model-summary")
    with gr.Accordion("Everything (JSON)", open=False):
        info = gr.JSON(label="Current model", elem_id="model-info")
    return dict(shipped=shipped_btn, refresh=info_btn, save=save_btn, upload=upload, saved=saved, info=info,
                summary=summary)


def build_concepts_tab():
    if importlib.util.find_spec("concepts_tab") is not None:
        from concepts_tab import build_concepts_tab as build
        build()
    else:
        gr.Markdown("*Concepts — softmax scaling by √d, vanishing and exploding gradients, LayerNorm vs "
                    "BatchNorm — are coming here soon.*")


def build_ui() -> gr.Blocks:
    with gr.Blocks(title="minigpt playground", delete_cache=(3600, 7200)) as demo:
        gr.Markdown(f"## minigpt playground <span class='mg-sub'>train a small GPT live, compare sampling, "
                    f"look inside attention · {_device_line()}</span>", elem_classes="mg-header")
        badge = gr.HTML('<div class="mg-model">Loading the shipped model…</div>', elem_id="model-badge")
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                t = build_train_tab()
            with gr.Tab("Generate", id="generate"):
                g = build_generate_tab()
            with gr.Tab("Attention", id="attention") as attention_tab:
                a = build_attention_tab()
            with gr.Tab("Tokenizer", id="tokenizer"):
                k = build_tokenizer_tab()
            with gr.Tab("Checkpoints", id="checkpoints") as checkpoints_tab:
                c = build_checkpoints_tab()
            with gr.Tab("Concepts", id="concepts"):
                build_concepts_tab()

        # Train
        train_out = [t["plot"], t["status"], t["sample"], t["card"], badge]
        gr.on([x.change for x in t["knobs"]], estimate, t["knobs"], [t["estimate"], t["start"]],
              api_name="estimate", queue=False, show_progress="hidden")
        t["data"].change(choose_data, t["data"], [t["text"], t["upload"]], api_visibility="private", queue=False)
        t["preset"].input(apply_preset, t["preset"], t["shape"], api_visibility="private", queue=False)
        jobs = dict(concurrency_limit=LIMITS.max_training_jobs, concurrency_id="train", show_progress="hidden")
        train_ev = t["start"].click(train, t["knobs"], train_out, api_name="train", **jobs)
        cont_ev = t["cont"].click(continue_training, t["knobs"], train_out, api_name="continue_training", **jobs)
        # The event sets this session's stop flag (works from gradio_client too); cancels= also drops a queued job.
        t["stop"].click(stop, None, train_out, api_name="stop", queue=False, cancels=[train_ev, cont_ev])
        t["reset"].click(reset, None, train_out, api_name="reset", concurrency_limit=None)
        t["save"].click(save, None, t["saved"], api_name="save", concurrency_limit=4, concurrency_id="infer").success(
            show, None, t["saved"], api_visibility="private", queue=False)

        # Generate
        infer = dict(concurrency_limit=4, concurrency_id="infer")
        cmp_ev = g["compare"].click(compare_sampling, [g["prompt"], g["tokens"], g["seed"], *g["switches"]],
                                    [g["out"], g["summary"], g["column"], g["step"]], api_name="compare_sampling",
                                    show_progress="hidden", **infer)
        cmp_ev.success(next_token_distribution, [g["column"], g["step"]], [g["nt_plot"], g["nt_note"]],
                       api_name="next_token_after_compare", api_visibility="private", **infer)
        gr.on([g["column"].input, g["step"].release], next_token_distribution, [g["column"], g["step"]],
              [g["nt_plot"], g["nt_note"]], api_name="next_token_distribution", **infer)
        g["colour"].input(recolour, g["colour"], g["out"], api_visibility="private", queue=False)
        g["gen"].click(generate, [g["prompt"], g["tokens"], *g["one"], g["seed"], g["use_cache"]],
                       [g["gen_out"], g["gen_stats"], g["cache_plot"]], api_name="generate", show_progress="hidden",
                       **infer)

        # Attention
        a["btn"].click(attention, [a["text"], a["layer"], a["head"]], [a["plot"], a["note"]], api_name="attention",
                       **infer)
        a["scores_btn"].click(attention_scores, a["text"], [a["scores_plot"], a["scores_numbers"]],
                              api_name="attention_scores", **infer)
        attention_tab.select(attention_choices, None, [a["layer"], a["head"]], api_visibility="private", queue=False)

        # Tokenizer
        k["text"].change(tokenize_text, k["text"], [k["out"], k["ids"]], api_name="tokenize", show_progress="hidden",
                         **infer)

        # Checkpoints
        # A refused file leaves the model panels as they were: the toast says why (no "Error" over them).
        c["upload"].upload(load_checkpoint, c["upload"], [c["info"], c["summary"], badge], api_name="load_checkpoint",
                           show_progress="hidden", **infer)
        c["shipped"].click(load_shipped, None, [c["info"], c["summary"], badge], api_name="load_shipped",
                           show_progress="hidden", **infer)
        c["refresh"].click(model_info, None, [c["info"], c["summary"], badge], api_name="model_info",
                           show_progress="hidden", **infer)
        checkpoints_tab.select(model_info, None, [c["info"], c["summary"], badge], api_name="model_info_on_tab",
                               api_visibility="private", **infer)
        c["save"].click(save, None, c["saved"], api_name="save_from_checkpoints", api_visibility="private",
                        **infer).success(show, None, c["saved"], api_visibility="private", queue=False)

        demo.load(on_load, None, badge, api_name="on_load", api_visibility="private")
        demo.load(estimate, t["knobs"], [t["estimate"], t["start"]], api_name="estimate_on_load",
                  api_visibility="private", queue=False)
        demo.load(tokenize_text, k["text"], [k["out"], k["ids"]], api_name="tokenize_on_load", api_visibility="private")
        demo.unload(on_unload)
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo


def launch_kwargs() -> dict:
    """What `launch()` needs besides host and port (which come from GRADIO_SERVER_NAME / _PORT)."""
    theme = gr.themes.Soft(text_size="lg", font=SANS, font_mono=MONO)  # local fonts: nothing fetched, works offline
    return dict(max_file_size=LIMITS.max_upload_bytes, theme=theme, css=plots.CSS,
                footer_links=["api", "gradio", "settings"], run_history=False)


demo = build_ui()

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
