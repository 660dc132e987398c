"""The page: the header, the tabs in order, and the page-wide events; `launch_kwargs()` for launch().

To add a tab: write `minigpt/ui/<name>_tab.py` with a `build(page, tab)` and add it to TABS.
Building the page loads no torch (tests/test_layout.py checks it): the header's device line and the
model badge arrive with the page-load event. May import gradio, minigpt's core (at import time
only its torch-free modules) and every minigpt.ui module.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import shutil

import gradio as gr

from minigpt import __version__, plots
from minigpt.device import pick_precision

from . import (architecture, attention_tab, checkpoints_tab, concepts_tab, generate_tab, ladder_tab, tokenizer_tab,
               train_tab)
from .common import CHEAP, LIMITS, PLAYGROUND, Page, saved_folder, session_of
from .theme import CSS, theme

TABS = [  # (label, id, module): each module's build(page, tab) lays out and wires its tab
    ("Train", "train", train_tab),
    ("Generate", "generate", generate_tab),
    ("Attention", "attention", attention_tab),
    ("Tokenizer", "tokenizer", tokenizer_tab),
    ("Checkpoints", "checkpoints", checkpoints_tab),
    ("Concepts", "concepts", concepts_tab),
    ("Build it up", "ladder", ladder_tab),
]


HEADER = ("## minigpt playground <span class='mg-sub'>train a small GPT live, compare sampling, "
          "look inside attention · {}</span>")


@functools.cache  # the same for the server's life; every page load asks
def device_line() -> str:
    """Where training runs, in which dtype, and the versions (makes the Playground: imports torch)."""
    dev = PLAYGROUND.device  # waits for the warm-up (or makes the Playground now)
    import torch
    dtype = pick_precision(dev, "auto").dtype  # the same at every width
    return f"running on <b>{dev}</b> · training in {dtype} · torch {torch.__version__} · minigpt {__version__}"


def on_load(request: gr.Request):
    """The page opened: the header's device line and the current-model badge (waits for the warm-up)."""
    header = HEADER.format(device_line())
    try:
        return header, plots.model_html(session_of(request).info())
    except ValueError as e:  # no shipped model: the page still works, Train makes one
        return header, f'<div class="mg-model">No model yet ({e}).</div>'


def on_unload(request: gr.Request):
    """The tab closed: forget its session (model, run) and its saved files."""
    key = getattr(request, "session_hash", None)
    if key:
        dropped = PLAYGROUND.drop(key)
        shutil.rmtree(saved_folder(key), ignore_errors=True)
        # Free a model of its own at once (its tensors may sit in reference cycles). Only then: a full
        # collection holds the interpreter lock for a while, and a class closing 30 tabs that used the
        # shared model made every other request wait (13% of the server's lock time under load).
        if dropped is not None and (dropped.owned is not None or dropped.run is not None):
            gc.collect()


def build_ui() -> gr.Blocks:
    demo = gr.Blocks(title="minigpt playground", delete_cache=(3600, 7200))
    with _app_made_at_launch(demo):
        with demo:
            header = gr.Markdown(HEADER.format("starting…"), elem_classes="mg-header")
            badge = gr.HTML('<div class="mg-model">Loading the shipped model…</div>', elem_id="model-badge")
            page = Page(demo=demo, badge=badge)
            built = {}
            with gr.Tabs() as tabs:
                for label, tab_id, module in TABS:
                    with gr.Tab(label, id=tab_id) as tab:
                        built[tab_id] = module.build(page, tab)
            architecture.link_concepts(tabs, built["concepts"]["try"], built["train"]["arch_targets"])
            demo.load(on_load, None, [header, badge], api_name="on_load", api_visibility="private", **CHEAP)
            demo.unload(on_unload)
        # max_size: a classroom of 30 opening the page at once queues ~3 page-load events each.
        demo.queue(default_concurrency_limit=4, max_size=256)
    return demo


@contextlib.contextmanager
def _app_made_at_launch(demo: gr.Blocks):
    """While the page is built, `demo` keeps the empty web app gradio made when the Blocks was created.

    Gradio makes the FastAPI app (~85 routes) again when the Blocks closes and at queue(), and
    launch() makes it once more; those two are never served. Skipping them took the page's build and
    launch from 0.93 to 0.68 s here (medians). Where gradio has no `App.create_app`, nothing changes."""
    from gradio.routes import App
    make = App.__dict__.get("create_app")
    if not isinstance(make, staticmethod):
        yield
        return

    def create_app(blocks, *args, **kwargs):
        return blocks.app if blocks is demo and getattr(blocks, "app", None) is not None else make.__func__(
            blocks, *args, **kwargs)
    App.create_app = staticmethod(create_app)
    try:
        yield
    finally:
        App.create_app = make


def launch_kwargs() -> dict:
    """What `launch()` needs besides host and port (which come from GRADIO_SERVER_NAME / _PORT)."""
    # max_threads: each run waiting in the training queue holds a (sleeping) worker thread.
    return dict(max_file_size=LIMITS.max_upload_bytes, theme=theme(), css=CSS,
                footer_links=["api", "gradio", "settings"], run_history=False, max_threads=80)
