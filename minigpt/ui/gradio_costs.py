"""Two per-event costs of Gradio 6 that a classroom pays for nothing, taken out before the page is built.

Measured on the 2-core build machine with this page (260 components), issue 16's classroom: 30
sessions, each first call of a session and every finished event paid them in the server's one
event loop, under the interpreter lock that every other call of the class waits for.

- Every new session (a browser tab's first event) built a `SessionState` that computed the config
  of all 260 components (16 ms), kept only for "deep links" (`gr.DeepLinkButton`), which this page
  does not have. `lazy_session_configs` makes a session compute a component's config when it is
  first needed instead (Gradio's own code already does that for a component it has not seen).
- After every finished event the queue rebuilt a pandas table of its last 10,000 events for the
  /monitoring summary: 2 ms with a few hundred events, 7 ms with 10,000. `quieter_analytics`
  summarises the last 500 events every 100th event.

May import gradio; nothing of minigpt.
"""

from __future__ import annotations

import os


def quieter_analytics() -> None:
    """Gradio reads these when the queue is made (demo.queue()): set them before. A value the
    environment already has is kept."""
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "500")
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")


class _WithoutComponents:
    """What `SessionState.__init__` reads of the Blocks, with no components listed: its eager loop
    over `blocks.blocks` then computes nothing. Anything else passes through to the Blocks."""

    def __init__(self, blocks):
        self._blocks, self.blocks = blocks, {}

    def __getattr__(self, name: str):
        return getattr(self._blocks, name)


def lazy_session_configs() -> bool:
    """Make Gradio's per-session state start with no component configs (computed when first needed).
    Returns False, changing nothing, where this Gradio's SessionState is not the one it was written for."""
    from gradio import state_holder

    cls = getattr(state_holder, "SessionState", None)
    if getattr(cls, "_minigpt_lazy", False):
        return True  # already in place
    if cls is None or not hasattr(cls, "_update_value_in_config"):
        return False  # another Gradio: its sessions are left as they are
    eager = cls.__init__

    def __init__(self, blocks):
        eager(self, _WithoutComponents(blocks))

    cls.__init__ = __init__
    cls._minigpt_lazy = True
    return True
