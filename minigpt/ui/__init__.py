"""The Gradio page: the only part of minigpt that imports gradio.

`layout.build_ui()` builds the page and `layout.launch_kwargs()` says how to launch it (app.py
does both). One module per tab (`train_tab`, `generate_tab`, `attention_tab`, `tokenizer_tab`,
`checkpoints_tab`, `concepts_tab`), each with a `build(page, tab)` that lays the tab out, wires its
events and returns the components others need; `common` holds what they share (the one
Playground, the limits, errors as toasts), `inputs` the input components whose refusals name the
knob, `theme` the look. Handlers are thin: a minigpt call in, component values out. Modules here
may import gradio, minigpt's core and each other; the core never imports them.
"""


def without_ipython() -> None:
    """For the server's process (app.py): where IPython is not loaded, importing it fails, as where it is
    not installed. gradio imports it when it loads (its notebook magic) and asks it at launch whether
    it runs in Colab: ~0.3 s of a ~4 s cold start here, for a server that never runs inside IPython.
    (Inside IPython it is loaded already, and nothing changes.)"""
    import sys
    sys.modules.setdefault("IPython", None)
