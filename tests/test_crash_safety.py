"""Crash safety: a process killed at any moment while saving leaves a checkpoint that loads."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from minigpt.checkpoint import load_checkpoint
from minigpt.recovery import clean_leftovers

SAVER = r"""
import sys, torch
from minigpt.checkpoint import save_checkpoint
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizers import CharTokenizer
tok = CharTokenizer.from_text("abcdefgh \n")
model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128))
i = 0
print("ready", flush=True)
while True:
    i += 1
    with torch.no_grad():
        model.transformer.wte.weight.fill_(float(i))  # each save differs, so a torn write would show
    save_checkpoint(sys.argv[1], model, tok, {"iters": i})
"""


@pytest.mark.slow
def test_sigkill_during_save_never_leaves_a_corrupt_file(tmp_path):
    path = tmp_path / "ck.safetensors"
    rng = random.Random(0)
    last_seen = 0
    for round_ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], cwd=ROOT, stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))  # each save takes ~10-30 ms: we land all over it
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not path.exists():
            continue
        ck = load_checkpoint(path)
        i = ck.training["iters"]
        assert (ck.model.transformer.wte.weight == float(i)).all()
        last_seen = max(last_seen, i)
    assert last_seen > 0
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    # A killed save may leave its temporary file behind, but never in place of the checkpoint.
    assert all(p.name.startswith(".ck.safetensors.") for p in leftovers)
    # ... and the cleanup at start removes every one of them, leaving the checkpoint loadable.
    assert sorted(clean_leftovers([tmp_path])) == sorted(leftovers)
    assert list(tmp_path.iterdir()) == [path]
    load_checkpoint(path)
