"""The Tokenizer tab: the same text split by the character tokenizer (Tiny Shakespeare's 65
symbols, from the shipped model's vocabulary when the text is not downloaded) and by GPT-2 BPE.

Endpoint: /tokenize. May import gradio, minigpt's core and minigpt.ui.common.
"""

from __future__ import annotations

import gradio as gr

from minigpt import plots
from minigpt.limits import check_text

from .common import CHEAP, LIMITS, PLAYGROUND, Page, user_errors

EXAMPLE = ("ROMEO:\nBut soft, what light through yonder window breaks?\n"
           "It is the east, and Juliet is the sun — naïve café.")


@user_errors
def tokenize_text(text):
    """The text split by the char tokenizer (Tiny Shakespeare's 65 symbols) and by GPT-2 BPE (50,257)."""
    r = PLAYGROUND.tokenize(check_text("text", text, LIMITS.max_prompt_chars))
    ids = {"char": {"count": r["char"]["count"], "vocab_size": r["char"]["vocab_size"],
                    "ids": [i for _, i in r["char"]["tokens"]]},
           "gpt2": {"count": r["gpt2"]["count"], "vocab_size": r["gpt2"]["vocab_size"],
                    "ids": [i for _, i in r["gpt2"]["tokens"]]}}
    return plots.tokens_html(r), ids


def build(page: Page, tab: gr.Tab) -> dict:
    """Lay out the Tokenizer tab inside `tab` and wire it (it fills in when the page loads)."""
    text = gr.Textbox(EXAMPLE, label="Text", lines=3, elem_id="tok-text")
    out = gr.HTML(elem_id="tok-out")
    with gr.Accordion("Token ids (JSON)", open=False):
        ids = gr.JSON(label="ids")
    gr.Markdown("The char model's vocabulary is the **65** distinct characters of Tiny Shakespeare: tiny, so each "
                "token carries little and sequences are long. GPT-2's BPE has **50,257** tokens learned from web "
                "text: common words are one token, rare ones split into pieces, and any text can be encoded.")
    text.change(tokenize_text, text, [out, ids], api_name="tokenize", show_progress="hidden", **CHEAP)
    page.demo.load(tokenize_text, text, [out, ids], api_name="tokenize_on_load", api_visibility="private",
                  **CHEAP)
    return dict(text=text)
