"""The Checkpoints tab: load the shipped model again, upload a .safetensors file (validated; a bad
file leaves the current model as it was), save the current one, see its config and run card.

Endpoints: /load_checkpoint, /load_shipped, /model_info (and /save, wired by the Train tab).
May import gradio, minigpt's core and minigpt.ui.common.
"""

from __future__ import annotations

import gradio as gr

from minigpt import plots

from .common import CHEAP, INFER, LIMITS, Page, save_dir, session_of, user_errors


@user_errors
def save(request: gr.Request = None):
    """The current model as a .safetensors checkpoint (weights, tokenizer, run card)."""
    s = session_of(request)
    return str(s.save(save_dir(s.key)))


def show_file():
    return gr.File(visible=True)


def _model_outputs(info):
    return info, plots.model_markdown(info), plots.model_html(info)


@user_errors
def load_checkpoint(file, request: gr.Request = None):
    """Upload a .safetensors checkpoint: validated by the loader; a bad file leaves the current model as it was."""
    return _model_outputs(session_of(request).load(file))


@user_errors
def load_shipped(request: gr.Request = None):
    """Make the shipped pretrained model the current one again."""
    return _model_outputs(session_of(request).load_shipped())


@user_errors
def model_info(request: gr.Request = None):
    """Config, parameter count, device, dtype and training summary (run card) of the current model."""
    return _model_outputs(session_of(request).info())


def build(page: Page, tab: gr.Tab) -> dict:
    """Lay out the Checkpoints tab inside `tab` and wire it (the model panels refresh when it opens)."""
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

    outputs = [info, summary, page.badge]
    # A refused file leaves the model panels as they were: the toast says why (no "Error" over them).
    upload.upload(load_checkpoint, upload, outputs, api_name="load_checkpoint", show_progress="hidden", **INFER)
    shipped_btn.click(load_shipped, None, outputs, api_name="load_shipped", show_progress="hidden", **INFER)
    info_btn.click(model_info, None, outputs, api_name="model_info", show_progress="hidden", **CHEAP)
    tab.select(model_info, None, outputs, api_name="model_info_on_tab", api_visibility="private", **CHEAP)
    save_btn.click(save, None, saved, api_name="save_from_checkpoints", api_visibility="private",
                   **INFER).success(show_file, None, saved, api_visibility="private", queue=False)
    return dict(info=info, summary=summary)
