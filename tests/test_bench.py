"""The bench: every key is there and sane on a tiny config; the table and the CLI; no timing asserts."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from minigpt import bench
from minigpt.cli import main
from minigpt.model import GPTConfig

TINY = bench.Sizes(train_model=GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32),
                   train_steps=9, train_rounds=1,
                   gen_model=GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32),
                   gen_tokens=20, gen_rounds=1, memory_iters=0, cold_start=False)


@pytest.fixture(scope="module")
def results():
    return bench.measure(TINY)


def test_measure_reports_every_key(results):
    assert set(bench.KEYS) <= set(results)
    for key in ("train_tokens_per_s", "train_tokens_per_s_fp32", "gen_tokens_per_s_cache", "gen_tokens_per_s_nocache"):
        assert isinstance(results[key], (int, float)) and results[key] > 0, key
    assert results["device"] == "cpu" and results["dtype"] in ("float32", "bfloat16")
    assert results["cold_start_s"] is None and results["peak_rss_mb"] is None  # both switched off in TINY
    json.dumps(results)


def test_table_has_a_row_per_measure(results):
    text = bench.table(results, TINY)
    assert "| measure | setting | result |" in text
    for words in ("training, fp32", "fast path", "KV cache", "no cache", "cold start", "peak RSS"):
        assert words in text
    assert "nanoGPT" not in text
    with_baseline = bench.table({**results, "baseline_tokens_per_s": 1000, "train_speedup_vs_baseline": 2.0}, TINY)
    assert "nanoGPT CPU recipe" in with_baseline


def test_cli_quick_json_prints_the_table_then_json_last(monkeypatch, capsys):
    monkeypatch.setattr(bench, "QUICK", TINY)
    assert main(["bench", "--quick", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert set(bench.KEYS) <= set(json.loads(lines[-1]))
    assert any(line.startswith("| training") for line in lines)


def test_training_throughput_window_needs_steps():
    with pytest.raises(ValueError, match="too few"):
        bench.train_tokens_per_s(TINY.train_model, "float32", steps=1)


def test_no_app_means_no_cold_start(tmp_path):
    assert bench.app_cold_start(tmp_path / "app.py") is None


def test_missing_baseline_script_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "BASELINE_SCRIPT", tmp_path / "nope.py")
    assert bench.run_baseline(10) is None


def test_peak_rss_of_a_short_training_run():
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--eval-iters", "1"]
    rss = bench.train_peak_rss_mb(2, tiny)
    assert rss is not None and 10 < rss < 4000


def test_quick_sizes_measure_the_issue_models():
    assert (bench.FULL.train_model.n_layer, bench.FULL.train_model.n_embd, bench.FULL.train_model.block_size) == (4, 128, 64)
    assert (bench.FULL.gen_model.n_layer, bench.FULL.gen_model.n_embd, bench.FULL.gen_model.block_size) == (6, 384, 256)
    assert bench.QUICK == replace(bench.QUICK) and bench.QUICK.gen_tokens == 256
    assert Path(bench.ROOT, "minigpt", "bench.py").exists()
