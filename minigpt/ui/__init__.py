"""The Gradio page: the only part of minigpt that imports gradio.

`layout.build_ui()` builds the page and `layout.launch_kwargs()` says how to launch it (app.py
does both). One module per tab (`train_tab`, `generate_tab`, `attention_tab`, `tokenizer_tab`,
`checkpoints_tab`, `concepts_tab`), each with a `build(page, tab)` that lays the tab out, wires its
events and returns the components others need; `common` holds what they share (the one
Playground, the limits, errors as toasts), `inputs` the input components whose refusals name the
knob, `theme` the look. Handlers are thin: a minigpt call in, component values out. Modules here
may import gradio, minigpt's core and each other; the core never imports them.
"""

import importlib.machinery
import sys


def lighter_gradio_import() -> None:
    """For a process about to import gradio (app.py): two things gradio does as it loads, which a
    server never needs, are skipped (~1.5–2.5 of the ~3.5–4.5 s gradio took to import here):

    - IPython: where it is not loaded, importing it fails, as where it is not installed. gradio
      imports it for its notebook magic and asks it at launch whether it runs in Colab (~0.3 s).
      Inside IPython it is loaded already, and nothing changes.
    - Type stubs: for each of its ~80 component classes, gradio re-parses the class's whole source
      file and rewrites the `.pyi` stub beside it (editor hints for gradio's own developers), ~1.5 s.
      `gradio.component_meta.create_or_modify_pyi` is made to do nothing as that module loads.

    Does nothing to a gradio already imported."""
    sys.modules.setdefault("IPython", None)
    if "gradio.component_meta" not in sys.modules and not any(isinstance(f, _NoStubs) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoStubs())


def _write_no_stub(*args, **kwargs) -> None:
    """Stands in for gradio's `create_or_modify_pyi` (see lighter_gradio_import)."""


class _NoStubs:
    """A meta-path finder that loads `gradio.component_meta` as usual, then swaps its stub writer
    for `_write_no_stub` before any component class is made; it leaves sys.meta_path once used."""

    def find_spec(self, name, path, target=None):
        if name != "gradio.component_meta":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            if hasattr(module, "create_or_modify_pyi"):
                module.create_or_modify_pyi = _write_no_stub
        spec.loader.exec_module = exec_module
        return spec
