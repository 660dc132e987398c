"""Never lose a run: the output is checked before training, a failed save goes elsewhere and says
where, and SIGINT / SIGTERM both save the model trained so far."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, SMALL_TEXT
from minigpt.checkpoint import load_checkpoint
from minigpt.data import TMP_MARK
from minigpt.saving import OutputError, check_writable, save_with_fallback, session_save_dir

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "1", "--seed", "3"]


def no_leftovers(folder):
    return not [p for p in folder.rglob("*") if p.name.endswith(TMP_MARK)]


def test_check_writable_accepts_a_new_nested_path_and_leaves_nothing_behind(tmp_path):
    p = check_writable(tmp_path / "a" / "b" / "m.safetensors")
    assert p.parent.is_dir() and not p.exists() and no_leftovers(tmp_path)


@pytest.mark.parametrize("make,message", [
    (lambda t: t, "is a folder"),
    (lambda t: str(t) + "/", "is a folder"),
    (lambda t: (t / "f.txt").write_text("x") and t / "f.txt" / "m.safetensors", "f.txt is a file, not a folder"),
    (lambda t: "/sys/m.safetensors", "cannot be written"),
    (lambda t: "/proc/nope/m.safetensors", "cannot be created"),
    (lambda t: "  ", "is empty"),
])
def test_check_writable_refuses_in_one_line(tmp_path, make, message):
    with pytest.raises(OutputError, match=message) as e:
        check_writable(make(tmp_path))
    assert "\n" not in str(e.value)


def enospc(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_save_with_fallback_says_where_and_why(tmp_path):
    written = []

    def write(p):
        if p == tmp_path / "full" / "m.safetensors":
            enospc(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("ok")
        written.append(p)
        return p

    path, note = save_with_fallback(tmp_path / "full" / "m.safetensors", write,
                                    fallbacks=[tmp_path / "rescued", tmp_path / "tmp"])
    assert path.parent == tmp_path / "rescued" and path.name.startswith("m-") and path.suffix == ".safetensors"
    assert "No space left on device" in note and str(path) in note and "\n" not in note
    assert save_with_fallback(tmp_path / "fine.safetensors", write) == (tmp_path / "fine.safetensors", None)


def test_save_with_fallback_says_what_was_not_saved_when_nothing_can_be_written(tmp_path):
    with pytest.raises(OutputError, match=r"the model \(5 iterations\) was NOT saved: .*No space left") as e:
        save_with_fallback(tmp_path / "m.safetensors", enospc, what="the model (5 iterations)",
                           fallbacks=[tmp_path / "a", tmp_path / "b"])
    assert "\n" not in str(e.value) and str(tmp_path / "b") in str(e.value)


def test_session_save_dir_is_per_session_and_falls_back_to_a_temp_folder(tmp_path):
    a, b = session_save_dir(tmp_path, "one"), session_save_dir(tmp_path, "two")
    assert a != b and a.parent == tmp_path and a.is_dir() and no_leftovers(tmp_path)
    blocked = tmp_path / "file"
    blocked.write_text("a file where the save root should be")
    c = session_save_dir(blocked, "one")
    assert c.is_dir() and blocked not in c.parents
    shutil.rmtree(c)


def test_train_saves_to_the_data_dir_when_the_disk_is_full(tmp_path, monkeypatch, capsys):
    """A patched writer raises ENOSPC for --out: the model goes to the data dir and the CLI says where."""
    import minigpt.checkpoint as checkpoint
    from minigpt.cli import main
    text = tmp_path / "t.txt"
    text.write_text(SMALL_TEXT)
    out = tmp_path / "runs" / "m.safetensors"
    real = checkpoint.atomic_write

    def full_disk(path, data):
        if path == out:
            enospc(path)
        return real(path, data)
    monkeypatch.setattr(checkpoint, "atomic_write", full_disk)
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "data"))
    assert main(["train", "--data", str(text), "--max-iters", "3", *TINY, "--out", str(out), "--log-json"]) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    saved = tmp_path / "data" / "rescued"
    assert summary["out"].startswith(str(saved)) and summary["requested_out"] == str(out) and summary["iters"] == 3
    warning = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "No space left on device" in warning[0] and summary["out"] in warning[0]
    assert load_checkpoint(summary["out"]).training["iters"] == 3
    assert not out.exists() and no_leftovers(tmp_path)


def test_train_says_in_one_line_what_was_lost_when_nothing_can_be_written(tmp_path, monkeypatch, capsys):
    import minigpt.checkpoint as checkpoint
    from minigpt.cli import main
    text = tmp_path / "t.txt"
    text.write_text(SMALL_TEXT)
    monkeypatch.setattr(checkpoint, "atomic_write", lambda path, data: enospc(path))
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "data"))
    out = str(tmp_path / "m.safetensors")
    assert main(["train", "--data", str(text), "--max-iters", "2", *TINY, "--out", out]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "the model (2 iterations) was NOT saved" in err[0] and "No space left" in err[0]


def start_training(tmp_path, out, extra_env=None):
    text = tmp_path / "t.txt"
    text.write_text(SMALL_TEXT)
    env = {**os.environ, "MINIGPT_DATA_DIR": str(tmp_path / "data"), "TMPDIR": str(tmp_path / "tmp"),
           "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    # As from a terminal: a process started in the background of a script inherits SIGINT ignored, and
    # Python then keeps ignoring it (no KeyboardInterrupt); handled here, the child starts with the default.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "minigpt", "train", "--data", str(text), "--max-seconds",
                                 "60", *TINY, "--eval-interval", "1000", "--log-json", "--log-interval", "1",
                                 "--out", str(out)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, old)
    steps = 0
    for line in proc.stdout:  # wait for a few real steps
        if json.loads(line).get("event") == "step":
            steps += 1
            if steps == 3:
                break
    assert steps == 3, proc.stderr.read()
    return proc


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, json.loads(out.strip().splitlines()[-1]), err


@pytest.mark.slow
@pytest.mark.parametrize("sig,word", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")])
def test_sigint_and_sigterm_save_the_model_trained_so_far(tmp_path, sig, word):
    out = tmp_path / "runs" / "m.safetensors"
    proc = start_training(tmp_path, out)
    proc.send_signal(sig)
    rc, summary, err = finish(proc)
    assert rc == 0, err
    assert f"{word}: saving the model trained so far" in err
    assert summary["out"] == str(out) and summary["iters"] >= 3
    ck = load_checkpoint(out)
    assert ck.training["iters"] == summary["iters"] and no_leftovers(tmp_path)


@pytest.mark.slow
def test_the_out_folder_removed_mid_run_still_saves_and_says_where(tmp_path):
    """The folder is removed during the run and a file put in its place, so it cannot be made again:
    SIGTERM saves to the data directory's rescued/ and the warning names it."""
    out = tmp_path / "runs" / "m.safetensors"
    proc = start_training(tmp_path, out)
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "runs").write_text("not a folder any more")
    proc.send_signal(signal.SIGTERM)
    rc, summary, err = finish(proc)
    assert rc == 1, err
    assert summary["out"].startswith(str(tmp_path / "data" / "rescued")) and summary["requested_out"] == str(out)
    assert any(line.startswith("warning: could not write") and summary["out"] in line for line in err.splitlines())
    assert load_checkpoint(summary["out"]).training["iters"] == summary["iters"]
