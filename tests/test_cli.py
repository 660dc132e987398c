"""The command line as a user runs it: train → sample → eval → info, and exit code 2 for user errors."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, SMALL_TEXT


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "minigpt", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    text = d / "text.txt"
    text.write_text(SMALL_TEXT)
    out = d / "m.safetensors"
    r = cli("train", "--data", text, "--n-layer", 1, "--n-embd", 32, "--n-head", 2, "--block-size", 16,
            "--max-iters", 60, "--eval-interval", 30, "--eval-iters", 2, "--out", out, "--log-json")
    assert r.returncode == 0, r.stderr
    return text, out, r.stdout


def test_train_logs_json_events_and_a_summary_last(trained):
    text, out, stdout = trained
    lines = [json.loads(line) for line in stdout.strip().splitlines()]
    assert lines[0]["event"] == "start" and any(e.get("event") == "eval" for e in lines)
    summary = lines[-1]
    assert set(summary) >= {"val_loss", "iters", "train_seconds", "tokens_per_s", "out"}
    assert summary["iters"] == 60 and summary["out"] == str(out) and out.exists()


def test_sample_eval_info(trained):
    text, out, _ = trained
    r = cli("sample", out, "--prompt", "First", "--tokens", 40, "--strategy", "greedy")
    assert r.returncode == 0 and r.stdout.startswith("First") and len(r.stdout) >= 40
    r2 = cli("sample", out, "--prompt", "First", "--tokens", 40, "--strategy", "greedy", "--no-cache")
    assert r2.stdout == r.stdout  # the cache changes speed, never text
    r = cli("eval", out, "--data", text)
    assert r.returncode == 0
    assert 0 < json.loads(r.stdout.strip().splitlines()[-1])["val_loss"] < 4
    r = cli("info", out, "--json")
    info = json.loads(r.stdout)
    assert info["config"]["n_layer"] == 1 and info["training"]["iters"] == 60 and info["params"] > 0


def test_sample_with_bf16_weights(trained):
    _, out, _ = trained
    r = cli("sample", out, "--prompt", "First", "--tokens", 40, "--weights", "bfloat16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("First") and len(r.stdout) >= 40 and "bf16 weights" in r.stderr


def test_resume_continues_the_count(trained, tmp_path):
    text, out, _ = trained
    more = tmp_path / "more.safetensors"
    r = cli("train", "--data", text, "--resume", out, "--max-iters", 10, "--out", more, "--log-json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["iters"] == 70


@pytest.mark.parametrize("args,words", [
    (["train", "--n-embd", 100, "--n-head", 3, "--max-iters", 1], "divisible"),
    (["train", "--batch-size", 0], "batch_size"),
    (["train", "--data", "/no/such/file.txt"], "no such text file"),
    (["train", "--lr", "nan"], "lr"),
    (["sample", "/no/such.safetensors"], "cannot read"),
    (["eval", "pyproject.toml"], "not a safetensors file"),
    (["sample", "CKPT", "--temperature", 0], "temperature"),
    (["sample", "CKPT", "--top-p", 2], "top_p"),
    (["sample", "CKPT", "--tokens", 10**9], "--tokens"),
    (["sample", "CKPT", "--prompt", "Zebra€"], "not in the model's vocabulary"),
])
def test_user_errors_exit_2_with_one_line(args, words, trained):
    _, out, _ = trained
    r = cli(*[out if a == "CKPT" else a for a in args])
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_flag_type_exits_2():
    r = cli("train", "--max-iters", "many")
    assert r.returncode == 2 and "invalid int value" in r.stderr
