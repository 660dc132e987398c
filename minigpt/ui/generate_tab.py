"""The Generate tab: one Compare runs several sampling strategies side by side from the same prompt
and seed; the next-token distribution at any step; one generation with the KV cache on or off.

Endpoints: /compare_sampling, /next_token_distribution, /generate. May import gradio, minigpt's
core and minigpt.ui.common / inputs.
"""

from __future__ import annotations

import gradio as gr

from minigpt import plots
from minigpt.config import STRATEGIES, SamplingConfig

from .common import COMPARE, DECODE, LIMITS, VIEWS, Page, drawn, session_of, user_errors
from .inputs import CheckboxGroup, Dropdown, Number, Slider

STRATEGY_CHOICES = ("greedy", "multinomial", "low temperature", "high temperature", "top-k", "top-p")


def _summary(columns):
    return [{"name": c["name"], "sampling": c["sampling"], "text": c["text"], "tokens": c["n"],
             "mean_loglik": round(c["mean_loglik"], 4), "perplexity": round(c["perplexity"], 3),
             "repeats": round(c["repeats"], 3), "tokens_per_s": round(c["tokens_per_s"], 1)} for c in columns]


def warn_long(s, prompt):
    note = s.prompt_note(prompt)
    if note:
        gr.Warning(note)


@user_errors
def compare_sampling(prompt, tokens, seed, strategies, low_t, high_t, top_k, top_p, colour, use_cache,
                     request: gr.Request = None):
    """Greedy, multinomial, temperatures (and top-k / top-p) side by side from the same prompt and seed."""
    from minigpt.views import sampling_columns  # imports torch: not while the page is built
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
    # Every update rebuilds the whole coloured HTML: twice a second is live enough.
    for columns in s.compare(prompt, tokens, seed, cols, use_cache=bool(use_cache), interval=0.5):
        if not all(c["done"] for c in columns):
            yield plots.compare_html(columns, colour), gr.skip(), gr.skip(), gr.skip()
    names = [c["name"] for c in columns]
    n = max(c["n"] for c in columns)
    yield (plots.compare_html(columns, colour), _summary(columns),
           gr.Dropdown(choices=names, value=names[0]), gr.Slider(maximum=n))


def recolour(colour, request: gr.Request = None):
    s = session_of(request)
    return plots.compare_html(s.last_columns, colour)


@user_errors
def next_token_distribution(column, step, request: gr.Request = None):
    """The next-token distribution at one step of the last comparison, and the same logits at T = 0.5, 1, 2."""
    s = session_of(request)
    info = s.next_token(column, step)
    note = (f"After …`{plots.show_token(info['context'][-40:])}` the model gave these probabilities; "
            f"**{info['column']}** chose **`{plots.show_token(info['chosen_piece'])}`** (rank {info['chosen_rank']}). "
            + ("*The model changed since this comparison: the bars are the current model's.*" if info["changed"] else ""))
    return drawn(plots.next_token_figure, info), note


@user_errors
def generate(prompt, tokens, strategy, temperature, top_k, top_p, seed, use_cache, request: gr.Request = None):
    """One strategy, streamed; the measured tokens/s with the KV cache on and off are kept and plotted."""
    s = session_of(request)
    sampling = SamplingConfig(strategy, temperature if temperature else 1.0, int(top_k) if top_k else None,
                              top_p if top_p and top_p < 1 else None)
    warn_long(s, prompt)
    stats = {}
    for text, stats in s.generate(prompt, tokens, sampling, seed, use_cache=bool(use_cache)):
        if not stats["done"]:
            yield (prompt or "") + text, gr.skip(), gr.skip()
    if not stats.get("done"):
        return  # the tab closed mid-way: nobody to show the figures to
    words = (f"{stats['tokens']} tokens in {stats['seconds']:.2f} s = **{stats['tokens_per_s']:.0f} tokens/s** "
             f"with the KV cache **{'on' if use_cache else 'off'}** · perplexity {stats['perplexity']:.2f}")
    if use_cache and stats["tokens"] > stats["cache_full_after"]:
        words += (f"  \nThe cache holds the model's context of {stats['context']} tokens: it was full after "
                  f"{stats['cache_full_after']} new tokens, and from then on each token recomputes the last "
                  f"{stats['context']}, as without the cache. Generate fewer tokens to see its full effect.")
    yield (prompt or "") + text, words, drawn(plots.cache_figure, dict(s.cache_speed))


def build(page: Page, tab: gr.Tab) -> dict:
    """Lay out the Generate tab inside `tab` and wire it; returns the prompt and the comparison's output."""
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
    nt_plot = gr.Plot(label="next-token distribution", show_label=False, elem_id="next-token-plot",
                      format="png")
    with gr.Accordion("Generate one text — and what the KV cache buys", open=False):
        with gr.Row(equal_height=True):
            strategy = Dropdown(list(STRATEGIES), value="temperature", label="strategy", min_width=140)
            temperature = Slider(0.05, 5.0, value=0.8, step=0.05, label="temperature", min_width=140)
            one_k = Number(0, label="top-k (0 = off)", precision=0, minimum=0, min_width=100)
            one_p = Number(1.0, label="top-p (1 = off)", minimum=0.01, maximum=1.0, min_width=100)
            gen_btn = gr.Button("Generate", min_width=100, elem_id="generate-btn")
        gen_out = gr.Textbox(label="Text", lines=6, max_lines=10, interactive=False)
        gen_stats = gr.Markdown("Switch **KV cache** (above) on and off and generate again to compare speeds.")
        cache_plot = gr.Plot(label="tokens per second", show_label=False, elem_id="cache-plot", format="png")

    switches = [strategies, low_t, high_t, top_k, top_p, colour, use_cache]
    cmp_ev = compare_btn.click(compare_sampling, [prompt, tokens, seed, *switches], [out, summary, column, step],
                               api_name="compare_sampling", show_progress="hidden", **COMPARE)
    cmp_ev.success(next_token_distribution, [column, step], [nt_plot, nt_note],
                   api_name="next_token_after_compare", api_visibility="private", **VIEWS)
    gr.on([column.input, step.release], next_token_distribution, [column, step], [nt_plot, nt_note],
          api_name="next_token_distribution", **VIEWS)
    colour.input(recolour, colour, out, api_visibility="private", queue=False)
    gen_btn.click(generate, [prompt, tokens, strategy, temperature, one_k, one_p, seed, use_cache],
                  [gen_out, gen_stats, cache_plot], api_name="generate", show_progress="hidden", **DECODE)
    return dict(prompt=prompt, compare=compare_btn, out=out)
