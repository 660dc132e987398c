"""What every tab shares: the server's one Playground and limits, the page handle, errors as toasts.

The Playground (and with it torch) is made on first use, not at import: the page is built and the
server answers before torch is loaded (cold start), and `PLAYGROUND.warm_up()` loads it in the
background once the server is up. May import gradio, minigpt's core (at import time only its
torch-free modules) and minigpt.ui.gradio_costs (no other ui module).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import inspect
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("MPLBACKEND", "Agg")  # figures are rendered off-screen, in worker threads
import gradio as gr  # noqa: E402

from minigpt.figure_cache import FigureCache, digest  # noqa: E402
from minigpt.limits import Limits  # noqa: E402
from minigpt.saving import session_save_dir  # noqa: E402

from .gradio_costs import lazy_session_configs, quieter_analytics  # noqa: E402

if TYPE_CHECKING:
    from minigpt.playground import Playground
    from minigpt.session import Session


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas (M_ARENA_MAX). By default each new thread may get an arena of its
    own (up to 8 per core), and a server's many worker threads then fragment memory: measured with
    8 clients a round, RSS rose ~25 MB every round (648 → 772 MB over six); with 2 arenas it stayed
    flat. Returns False where there is no glibc (macOS, Windows, musl): nothing to do there."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-8, n) == 1  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        return False


class SharedPlayground:
    """The server's one Playground, made on first use by whichever thread needs it first; a thread
    that asks while it is being made waits for it (one lock, one Playground). Attributes and `in`
    pass through, so handlers write `PLAYGROUND.session(key)` as if it were the Playground itself."""

    def __init__(self, limits: Limits):
        self._limits, self._lock, self._playground = limits, threading.Lock(), None

    def get(self) -> Playground:
        """The Playground, made now (importing torch, ~1 s) if nobody has made it yet."""
        if self._playground is None:  # checked again under the lock: two first callers make one
            with self._lock:
                if self._playground is None:
                    from minigpt.playground import Playground
                    self._playground = Playground(self._limits)
        return self._playground

    def warm_up(self) -> threading.Thread:
        """Make the Playground, load the shipped model and matplotlib in a background thread, so the
        first click does not pay for them. Call it once the server answers: on 2 cores, torch's
        import running beside the server's start would delay the first page."""
        def work():
            try:
                self.get().shipped()
            except ValueError:  # no shipped model: the page says so when it loads
                pass
            import matplotlib.figure  # noqa: F401  (the first plot's import)

        thread = threading.Thread(target=work, name="minigpt-warm-up", daemon=True)
        thread.start()
        return thread

    def __getattr__(self, name: str):
        return getattr(self.get(), name)

    def __contains__(self, key: str) -> bool:
        return key in self.get()


limit_malloc_arenas()  # before the worker threads exist
quieter_analytics()  # before demo.queue()
lazy_session_configs()  # before the first session
LIMITS = Limits.from_env()
PLAYGROUND = SharedPlayground(LIMITS)  # the one registry of sessions (keyed by session hash) and the shared model
FIGURES = FigureCache(256)  # figures drawn once per distinct input, for every session
SAVE_ROOT = Path(tempfile.gettempdir()) / "minigpt-app"  # the page's saves (app.py cleans leftovers at start)
# The page's worker pools (Gradio's queue: events with the same concurrency_id share one limit). Cheap
# calls (milliseconds) get a pool of their own without a limit, so they never wait behind decoding,
# the views or training; single Generate and the views get two workers each (decoding is Python
# overhead per token: more threads on 2 cores only wait for each other). Compare decodes in the
# Playground's one shared decoding thread (minigpt/decode_batcher.py), so its workers mostly wait:
# its pool is wide, so that concurrent Compares reach that thread together and share each step.
# Training is gated by the Playground's TrainingQueue, not here (a waiting run streams its place).
# Save and load share INFER.
CHEAP = dict(concurrency_limit=None, concurrency_id="cheap")    # model info, tokenizer, estimate
COMPARE = dict(concurrency_limit=32, concurrency_id="compare")  # Compare: a classroom's at once
DECODE = dict(concurrency_limit=2, concurrency_id="decode")     # Generate (the KV cache on/off timing)
VIEWS = dict(concurrency_limit=2, concurrency_id="views")       # next-token view, attention
INFER = dict(concurrency_limit=4, concurrency_id="infer")       # save, load


@dataclass
class Page:
    """What a tab's builder may hook into besides its own components."""
    demo: gr.Blocks    # for page-load events
    badge: gr.HTML     # the header's "current model" badge: anything that changes the model updates it


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


def drawn(builder, *args):
    """A gr.Plot value for the figure `builder(*args)`, drawn once per distinct builder and arguments
    and handed to Gradio already encoded as a PNG (minigpt/figure_cache.py says why)."""
    from gradio.components.plot import PlotData
    return PlotData(type="matplotlib", plot=FIGURES.get(digest(builder.__qualname__, *args), lambda: builder(*args)))


def session_of(request: gr.Request | None) -> Session:
    key = getattr(request, "session_hash", None) or f"anonymous-{uuid.uuid4()}"
    return PLAYGROUND.session(key)


def save_dir(key: str) -> Path:
    """This session's save folder: checked (written to) first, a fresh temp folder if it cannot be
    written; OutputError (a ValueError: a toast) if nothing can be."""
    return session_save_dir(SAVE_ROOT, key)


def saved_folder(key: str) -> Path:
    """Where `save_dir` puts this session's checkpoints (removed when its tab closes)."""
    return SAVE_ROOT / hashlib.sha1(key.encode()).hexdigest()[:16]
