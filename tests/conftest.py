"""Shared test set-up: the data directory, tiny models and texts."""

import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app.py lives at the top level (the page itself is minigpt/ui/)
os.environ.setdefault("MINIGPT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from minigpt.ui import lighter_gradio_import  # noqa: E402

lighter_gradio_import()  # the suite's gradio loads as app.py's does: ~2 s sooner, no stubs rewritten

SMALL_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
              "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 20


@pytest.fixture
def small_text():
    return SMALL_TEXT


SHORT_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak.\n"


@pytest.fixture
def tok():
    """A character tokenizer of a short text (the batched-decoding tests' vocabulary)."""
    from minigpt.tokenizers import CharTokenizer
    return CharTokenizer.from_text(SHORT_TEXT)


@pytest.fixture
def gpt(tok):
    """A tiny untrained GPT in eval mode over `tok`'s vocabulary, context 16."""
    from minigpt.model import GPT, GPTConfig
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.fixture
def tiny_gpt():
    from minigpt.model import GPT, GPTConfig
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingForward:
    """Counts the model's forward calls and the batch size of each."""

    def __init__(self, model):
        self.batches = []
        self.handle = model.register_forward_pre_hook(lambda m, args, kwargs: self.batches.append(args[0].shape[0]),
                                                      with_kwargs=True)


def forward_sizes(block: int, rows, cache: bool = True) -> list[int]:
    """The batch of each forward a decoding group runs after its prefills: every row still decoding
    while the cache has room, then (recomputing) each distinct window once. rows: (prompt ids, generated ids)."""
    sizes = []
    for i in range(max(len(g) for _, g in rows) - 1):
        live = [tuple((p + g[:i + 1])[-block:]) for p, g in rows if len(g) - 1 > i]
        sizes.append(len(live) if cache and len(rows[0][0]) + i < block else len(set(live)))
    return sizes


def wait_for(cond, timeout=60.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return False


@pytest.fixture(scope="session")
def app_server():
    """The playground launched once, in-process, on 127.0.0.1: (the app module, its URL)."""
    old = os.environ.get("GRADIO_HEARTBEAT_INTERVAL")
    os.environ["GRADIO_HEARTBEAT_INTERVAL"] = "1"  # so a closed client's session is freed within seconds
    import app
    _, url, _ = app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                quiet=True, **app.launch_kwargs())
    try:
        yield app, url
    finally:
        app.demo.close()
        if old is None:
            os.environ.pop("GRADIO_HEARTBEAT_INTERVAL", None)
        else:
            os.environ["GRADIO_HEARTBEAT_INTERVAL"] = old
