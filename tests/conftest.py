"""Shared test set-up: the data directory, tiny models and texts."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MINIGPT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SMALL_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
              "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 20


@pytest.fixture
def small_text():
    return SMALL_TEXT


@pytest.fixture
def tiny_gpt():
    from minigpt.model import GPT, GPTConfig
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32))
