"""Figures as PNG data URLs, drawn once per distinct input and shared by every session.

Drawing a matplotlib figure and encoding it costs 0.3–1.5 s of pure Python here, all of it holding
the GIL: under a classroom's load (30 sessions on 2 cores) figures were 56% of the server's
GIL-holding time (py-spy), and every cheap call waited behind them. A figure is a pure function of
its inputs, and a class mostly asks for the same ones (the shipped model, the default text), so the
views key each figure by a digest of exactly what it draws: a repeat costs a dictionary lookup, and
requests for a figure being drawn wait for that one drawing instead of drawing it again.

May import only the standard library and numpy/torch for digests (no gradio, no pyplot).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable


def png_data_url(fig, dpi: float | None = None) -> str:
    """`fig` encoded as a PNG `data:` URL (the figure is closed: it is not drawn again)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        fig.clf()  # frees the artists; figures made without pyplot need no plt.close
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def digest(*parts) -> str:
    """A stable digest of `parts`: numbers, strings, bytes, None, numpy arrays and torch tensors (their
    dtype, shape and bytes), and lists, tuples, dicts and dataclasses of them; TypeError otherwise."""
    h = hashlib.blake2b(digest_size=16)

    def feed(x):
        if hasattr(x, "detach"):  # a torch tensor
            x = x.detach().cpu().contiguous().numpy()
        if hasattr(x, "tobytes") and hasattr(x, "dtype"):  # a numpy array or scalar
            h.update(f"<{x.dtype}{getattr(x, 'shape', ())}>".encode())
            h.update(x.tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                feed(str(k))
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(f"[{len(x)}".encode())
            for item in x:
                feed(item)
            h.update(b"]")
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            feed(type(x).__qualname__)
            feed({f.name: getattr(x, f.name) for f in dataclasses.fields(x)})
        elif x is None or isinstance(x, (str, bytes, bool, int, float)):
            h.update(f"{type(x).__name__}:{x!r};".encode())  # repr is exact for these
        else:  # a repr may abbreviate (and two inputs then share a figure): refuse instead
            raise TypeError(f"cannot digest a {type(x).__name__}")

    for p in parts:
        feed(p)
    return h.hexdigest()


class FigureCache:
    """A bounded, thread-safe map from a key to a drawn figure's data URL, drawing each key once.

    `get(key, draw)` returns the cached URL, or calls `draw()` (which returns a matplotlib figure)
    once for all concurrent callers of the same key. A failed drawing is not cached: its error goes
    to the callers waiting for it and the next call draws again.
    """

    def __init__(self, max_items: int = 256):
        self.max_items = max_items
        self._items: OrderedDict[str, Future] = OrderedDict()
        self._lock = threading.Lock()
        self.draws = 0  # how many figures were actually drawn (the rest came from the cache)

    def get(self, key: str, draw: Callable[[], object]) -> str:
        with self._lock:
            fut = self._items.get(key)
            mine = fut is None
            if mine:
                fut = self._items[key] = Future()
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
            else:
                self._items.move_to_end(key)
        if not mine:
            return fut.result()
        try:
            url = png_data_url(draw())
        except BaseException as e:
            with self._lock:
                if self._items.get(key) is fut:
                    del self._items[key]
            fut.set_exception(e)
            raise
        with self._lock:
            self.draws += 1
        fut.set_result(url)
        return url

    def __len__(self) -> int:
        return len(self._items)
