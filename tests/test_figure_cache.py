"""Figures drawn once per distinct input (minigpt/figure_cache.py) and what the page gets from them."""

import base64
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from minigpt import plots
from minigpt.figure_cache import FigureCache, digest, png_data_url


def bar_figure(values):
    fig = plots._figure(2, 1)
    fig.add_subplot().bar(range(len(values)), values)
    return fig


def test_png_data_url_is_a_png():
    url = png_data_url(bar_figure([1, 2]))
    head, _, data = url.partition(",")
    assert head == "data:image/png;base64"
    assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


@dataclass
class Point:
    x: float
    tag: str


def test_digest_tells_inputs_apart_and_agrees_on_equal_ones():
    w = torch.rand(3, 3)
    same = [digest("f", ["a", "b"], w.clone(), 0), digest("f", ["a", "b"], w.clone(), 0)]
    assert same[0] == same[1]
    w2 = w.clone()
    w2[1, 1] += 1e-6  # one weight a hair different: another figure
    others = {digest("f", ["a", "b"], w2, 0), digest("f", ["a", "c"], w, 0), digest("f", ["a", "b"], w, 1),
              digest("g", ["a", "b"], w, 0), digest("f", ["a", "b"], w.double(), 0),
              digest("f", ["a", "b"], w.reshape(9), 0)}
    assert same[0] not in others and len(others) == 6
    assert digest({"t": 1.0, "p": [0.5]}) == digest({"p": [0.5], "t": 1.0})  # dict order does not matter
    assert digest(1) != digest(1.0) != digest("1")
    assert digest(Point(1.0, "a")) != digest(Point(1.0, "b"))
    assert digest(np.float32(0.5)) != digest(np.float64(0.5))
    with pytest.raises(TypeError, match="cannot digest"):
        digest(object())  # its repr names an address: refused rather than trusted


def test_each_key_is_drawn_once_even_when_asked_at_once():
    cache, calls, gate = FigureCache(), [], threading.Event()

    def draw():
        calls.append(1)
        gate.wait(5)  # every other caller arrives while this one draws
        return bar_figure([1, 3])

    urls = []
    threads = [threading.Thread(target=lambda: urls.append(cache.get("k", draw))) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and cache.draws == 1
    assert len(urls) == 8 and len(set(urls)) == 1
    assert cache.get("other", lambda: bar_figure([2, 1])) != urls[0] and cache.draws == 2


def test_a_failed_drawing_is_not_kept_and_the_cache_stays_bounded():
    cache = FigureCache(max_items=3)

    def broken():
        raise ValueError("no data")

    with pytest.raises(ValueError, match="no data"):
        cache.get("k", broken)
    assert len(cache) == 0
    assert cache.get("k", lambda: bar_figure([1])).startswith("data:image/png")  # drawn now
    for i in range(5):
        cache.get(f"k{i}", lambda: bar_figure([1]))
    assert len(cache) == 3 and cache.draws == 6


def test_the_page_draws_a_repeated_view_once(tmp_path, small_text):
    from minigpt.checkpoint import save_checkpoint
    from minigpt.model import GPT, GPTConfig
    from minigpt.tokenizers import CharTokenizer
    from minigpt.limits import Limits
    from minigpt.playground import Playground

    common = pytest.importorskip("minigpt.ui.common")
    tok = CharTokenizer.from_text(small_text)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
    shipped = save_checkpoint(tmp_path / "shipped.safetensors", gpt, tok, {"iters": 0})
    pg = Playground(Limits(), shipped_path=shipped, device="cpu")
    cache = common.FIGURES
    before = cache.draws
    a = pg.session("one").attention("First")
    b = pg.session("two").attention("First")  # another session, the same shared model and text
    first = common.drawn(plots.attention_grid, a["tokens"], a["weights"][0], 0)
    second = common.drawn(plots.attention_grid, b["tokens"], b["weights"][0], 0)
    assert first.type == "matplotlib" and first.plot == second.plot and cache.draws == before + 1
    third = common.drawn(plots.attention_grid, a["tokens"], a["weights"][1], 1)  # another layer
    assert third.plot != first.plot and cache.draws == before + 2
