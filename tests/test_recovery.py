"""Recovery after a crash: a process killed while it saves leaves a temporary file; the cleanup at
start removes it (and only it), and the last finished checkpoint still loads."""

import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from minigpt.checkpoint import load_checkpoint
from minigpt.data import TMP_MARK, atomic_write
from minigpt.recovery import app_folders, clean_leftovers, writer_pid

# Saves in a loop; the second save stops half-written (the writer sleeps mid-file) so the kill lands inside it.
SAVER = r"""
import sys, time, torch
import minigpt.data as data
from minigpt.checkpoint import save_checkpoint
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizers import CharTokenizer
tok = CharTokenizer.from_text("abcdefgh \n")
model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32))
save_checkpoint(sys.argv[1], model, tok, {"iters": 1})
real = data.atomic_write
def slow(path, payload):
    with data.atomic_file(path) as f:
        f.write(payload[: len(payload) // 2])
        f.flush()
        print("half-written", flush=True)
        time.sleep(60)
        f.write(payload[len(payload) // 2:])
import minigpt.checkpoint as checkpoint
checkpoint.atomic_write = slow
with torch.no_grad():
    model.transformer.wte.weight.fill_(2.0)
save_checkpoint(sys.argv[1], model, tok, {"iters": 2})
"""


def temp_name(folder, name, pid):
    return folder / f".{name}.{pid}.abc123{TMP_MARK}"


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_writer_pid_reads_the_name():
    assert writer_pid(f".m.safetensors.1234.x_y{TMP_MARK}") == 1234
    assert writer_pid(f".a.b.c.safetensors.77.q{TMP_MARK}") == 77
    assert writer_pid("m.safetensors") is None and writer_pid(".m.safetensors.tmp") is None


def test_cleanup_removes_dead_writers_leftovers_only(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    finished = [tmp_path / "m.safetensors", tmp_path / "sub" / "x.safetensors", tmp_path / ".hidden-finished",
                tmp_path / f"visible{TMP_MARK}"]
    for p in finished:
        p.write_bytes(b"finished")
    dead = [temp_name(tmp_path, "m.safetensors", dead_pid()), temp_name(tmp_path / "sub", "x.safetensors", dead_pid())]
    live = [temp_name(tmp_path, "m.safetensors", os.getpid()), temp_name(tmp_path, "n.safetensors", os.getppid())]
    legacy_new, legacy_old = tmp_path / ".m.safetensors.k2j3.tmp", tmp_path / ".n.safetensors.k2j3.tmp"
    old_live = temp_name(tmp_path, "o.safetensors", os.getppid())
    for p in dead + live + [legacy_new, legacy_old, old_live]:
        p.write_bytes(b"half")
    week_ago = time.time() - 7 * 86400
    for p in (legacy_old, old_live):
        os.utime(p, (week_ago, week_ago))
    link = tmp_path / f".l.{dead_pid()}.z{TMP_MARK}"
    link.symlink_to(tmp_path / "m.safetensors")
    removed = clean_leftovers([tmp_path, tmp_path / "no-such-folder"])
    assert sorted(removed) == sorted(dead + [legacy_old, old_live])
    assert all(p.exists() for p in finished + live + [legacy_new, link])


def test_cleanup_stops_at_max_depth(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    p = temp_name(deep, "m.safetensors", dead_pid())
    p.write_bytes(b"x")
    assert clean_leftovers([tmp_path], max_depth=2) == [] and p.exists()
    assert clean_leftovers([tmp_path], max_depth=3) == [p]


def test_app_folders_cover_checkpoints_data_and_the_save_root(tmp_path):
    from minigpt.data import data_dir
    folders = app_folders(tmp_path)
    assert ROOT / "checkpoints" in folders and data_dir() in folders and tmp_path in folders


def test_atomic_write_names_its_temporary_file_with_pid_and_mark(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(a), real_replace(a, b)))
    atomic_write(tmp_path / "m.bin", b"data")
    assert len(seen) == 1 and writer_pid(os.path.basename(seen[0])) == os.getpid()


@pytest.mark.slow
def test_kill_9_while_saving_then_cleanup_and_the_last_checkpoint_loads(tmp_path):
    path = tmp_path / "ck.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half-written"
    finally:
        proc.kill()  # SIGKILL: no finally, no atexit
        proc.wait()
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and writer_pid(leftovers[0].name) == proc.pid
    assert load_checkpoint(path).training["iters"] == 1  # the old file, whole
    assert clean_leftovers([tmp_path]) == leftovers
    assert list(tmp_path.iterdir()) == [path]
    assert load_checkpoint(path).training["iters"] == 1
