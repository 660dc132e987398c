"""The bench: every key is there and sane on a tiny config; the table and the CLI; no timing asserts."""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from minigpt import bench
from minigpt.cli import main
from minigpt.model import GPTConfig

TINY = bench.Sizes(train_model=GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32),
                   train_steps=9, train_rounds=1,
                   gen_model=GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32),
                   gen_tokens=20, gen_rounds=1, memory_iters=0, cold_start=False)


@pytest.fixture(scope="module")
def results():
    return bench.measure(TINY, device="cpu")


def test_measure_reports_every_key(results):
    assert set(bench.KEYS) <= set(results)
    for key in ("train_tokens_per_s", "train_tokens_per_s_fp32", "gen_tokens_per_s_cache", "gen_tokens_per_s_nocache"):
        assert isinstance(results[key], (int, float)) and results[key] > 0, key
    assert results["device"] == "cpu" and results["dtype"] in ("float32", "bfloat16")
    assert results["cold_start_s"] is None and results["peak_rss_mb"] is None  # both switched off in TINY
    json.dumps(results)


def test_bf16_decoding_is_measured_against_half_the_floor(results):
    """bf16 weights read half the bytes: their step is reported against half the fp32 floor, on any
    CPU where the kernel runs (it widens bf16 itself) or the CPU has native bf16 (the eager path)."""
    from minigpt.device import cpu_has_native_bf16
    expected = results["decode_path"] == "kernel" or cpu_has_native_bf16()
    assert ("decode_step_ms_bf16" in results) == expected
    weight_mb = bench.weight_bytes_per_token(TINY.gen_model) / 1e6
    rows = [("", 1.0)] + ([("_bf16", 0.5)] if expected else [])
    for suffix, share in rows:
        floor = share * weight_mb / results[f"memory_bandwidth_gbs{suffix}"]
        assert results[f"decode_floor_ms{suffix}"] == pytest.approx(floor, abs=1e-3)
        # (the tiny model's floor rounds to nothing: compare with the unrounded floor)
        assert results[f"decode_vs_floor{suffix}"] == pytest.approx(results[f"decode_step_ms{suffix}"] / floor, rel=0.1)
    if expected:
        assert "decode step vs its floor, bf16 weights" in bench.table(results, TINY)


def test_each_decode_step_is_compared_with_its_own_rounds_bandwidth(monkeypatch):
    """The bandwidth swings between rounds: a round's step is set against the floor measured in that
    round, and the round closest to its floor is reported (every round's ratio is listed)."""
    bandwidths = iter([10.0, 40.0])  # GB/s: round 1 slow memory, round 2 fast
    steps = iter([2.0, 1.0, 9.0, 9.0, 1.5, 0.8, 9.0, 9.0])  # ms, per round: cache, cache_bf16, then the rest
    monkeypatch.setattr(bench, "memory_bandwidth_gbs", lambda huge_pages=True: next(bandwidths) if huge_pages else 5.0)
    monkeypatch.setattr(bench, "train_tokens_per_s", lambda *a, **k: 1000.0)
    monkeypatch.setattr(bench, "timed_generation", lambda *a, **k: (100.0, next(steps)))
    monkeypatch.setattr(bench, "weight_bytes_per_token", lambda cfg: 10_000_000)  # 10 MB
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr("minigpt.decode_kernel.load", lambda build=False: object())
    r = bench.measure(replace(TINY, gen_rounds=2), device="cpu")
    # fp32 floors 1.0 and 0.25 ms: ratios 2.0 and 6.0, so round 1 (slower step, slower memory)
    assert (r["decode_step_ms"], r["decode_floor_ms"], r["memory_bandwidth_gbs"]) == (2.0, 1.0, 10.0)
    assert r["decode_vs_floor"] == 2.0 and r["decode_vs_floor_rounds"] == [2.0, 6.0]
    assert r["memory_bandwidth_gbs_4k_pages"] == 5.0  # shown beside, never the floor
    # bf16 floors 0.5 and 0.125 ms: ratios 2.0 and 6.4
    assert (r["decode_step_ms_bf16"], r["decode_floor_ms_bf16"], r["decode_vs_floor_bf16"]) == (1.0, 0.5, 2.0)


def test_the_decode_step_is_the_time_between_tokens(monkeypatch):
    """decode_step_ms times generate() from the first token to the last, so the setup and the prompt's
    pass before the first token (one-off costs, not a decoding step) are not spread over the steps."""
    from minigpt import generate as generation
    slow_start, real = [True], generation.generate

    def generate(*args, **kwargs):
        for i, step in enumerate(real(*args, **kwargs)):
            if i == 0 and slow_start[0]:
                time.sleep(0.5)  # a slow first token: 25 ms a token if it were spread over 20
            yield step
    monkeypatch.setattr(generation, "generate", generate)
    speed, step_ms = bench.timed_generation(TINY.gen_model, 20, True)
    assert speed < 40 and step_ms < 25  # the whole call pays for the first token; the steps do not


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


def test_the_recipe_runs_as_its_users_run_it(monkeypatch, tmp_path):
    """Our entry points ask torch for huge pages (minigpt.TORCH_ENV); the baseline does not get them."""
    script = tmp_path / "recipe.py"
    script.write_text("import json, os\nprint(json.dumps({'thp': os.environ.get('THP_MEM_ALLOC_ENABLE')}))\n")
    monkeypatch.setattr(bench, "BASELINE_SCRIPT", script)
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert bench.run_baseline(10) == {"thp": None}


def test_peak_rss_of_a_short_training_run():
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--eval-iters", "1"]
    rss = bench.train_peak_rss_mb(2, tiny)
    assert rss is not None and 10 < rss < 4000


def test_peak_rss_is_the_childs_own_not_its_parents():
    """Linux's rusage of a child counts its parent's memory at fork: hold 512 MB here and a bare
    interpreter must still measure as the few MB it is."""
    held = torch.ones(128 * 2**20)  # 512 MB, every page touched
    # The child holds its memory a moment: a peak in the last poll interval before exit is missed.
    rss = bench.peak_rss_mb([sys.executable, "-c", "import time; x = b'1' * (64 * 2**20); time.sleep(0.3)"])
    assert held.sum() > 0 and rss is not None and 64 < rss < 200
    assert bench.peak_rss_mb([sys.executable, "-c", "raise SystemExit(3)"]) is None


def test_quick_sizes_measure_the_issue_models():
    assert (bench.FULL.train_model.n_layer, bench.FULL.train_model.n_embd, bench.FULL.train_model.block_size) == (4, 128, 64)
    assert (bench.FULL.gen_model.n_layer, bench.FULL.gen_model.n_embd, bench.FULL.gen_model.block_size) == (6, 384, 256)
    assert bench.QUICK == replace(bench.QUICK) and bench.QUICK.gen_tokens == 256
    assert Path(bench.ROOT, "minigpt", "bench.py").exists()


# ---- the performance helpers the trainer uses -------------------------------------------------------

def fake_threads(monkeypatch, available: int):
    """A clock the test moves and a record of set_num_threads calls, for ThreadTuner."""
    import torch

    from minigpt import device
    clock, calls = {"t": 0.0}, []
    monkeypatch.setattr(device.time, "perf_counter", lambda: clock["t"])
    # device.py imports torch where it uses it: patch the module itself (undone after the test).
    monkeypatch.setattr(torch, "get_num_threads", lambda: available)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    return device, clock, calls


def test_thread_tuner_keeps_the_faster_count_and_restores(monkeypatch):
    device, clock, calls = fake_threads(monkeypatch, 4)
    tuner = device.ThreadTuner(window=5, every=50)
    cost = {4: 1.0, 2: 0.5}  # seconds per step: here half the threads run faster (a busy machine)
    threads = 4
    for _ in range(40):
        clock["t"] += cost[threads]
        tuner.tick()
        threads = calls[-1] if calls else 4
    assert calls == [2]  # probed half the threads once and kept them
    tuner.restore()
    assert calls == [2, 4]


@pytest.mark.parametrize("one_thread,window,most", [
    (5.0, 10, 3),   # 50x slower: given up within the first steps, not after a window of 10
    (0.16, 20, 4),  # 1.6x (the default model on a quiet 2-core machine): the untimed step and 3 timed ones
])
def test_thread_tuner_gives_up_a_slower_probe_early(monkeypatch, one_thread, window, most):
    device, clock, calls = fake_threads(monkeypatch, 2)
    tuner = device.ThreadTuner(window=window, every=1000, settle=3)
    cost = {2: 0.1, 1: one_thread}
    threads, probe_steps = 2, 0
    for _ in range(80):
        clock["t"] += cost[threads]
        probe_steps += threads == 1
        tuner.tick()
        threads = calls[-1] if calls else 2
    assert calls == [1, 2] and threads == 2
    assert 1 <= probe_steps <= most


def test_thread_tuner_pins_only_while_all_threads_run(monkeypatch):
    """Pinned at the start (every thread on a core of its own), let go on half the threads (a lone
    thread must be able to leave a busy core) and after restore()."""
    device, clock, calls = fake_threads(monkeypatch, 2)
    pins = []
    tuner = device.ThreadTuner(window=5, every=1000, settle=3, pin=pins.append)
    assert pins == [True]
    cost = {2: 1.0, 1: 0.5}  # a busy machine: one thread runs faster, so the probe keeps it
    threads = 2
    for _ in range(30):
        clock["t"] += cost[threads]
        tuner.tick()
        threads = calls[-1] if calls else 2
    assert calls == [1] and pins == [True, False]
    tuner.restore()
    assert calls == [1, 2] and pins == [True, False, False]


def test_one_thread_machine_needs_no_tuning(monkeypatch):
    import torch

    from minigpt import device
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not device.ThreadTuner().active


FAULTS_PROBE = """
import ctypes, resource, sys, torch
from minigpt.device import M_MMAP_THRESHOLD, keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
else:  # every 2 MB block mapped on its own and unmapped when freed: glibc's default at its worst
    assert ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 << 10)
def step():  # a training step's pattern: many activations alive together, then all freed
    xs = [torch.ones(2**19) for _ in range(20)]  # 20 blocks of 2 MB, every page touched
    del xs
for _ in range(10):  # the heap grows to its size (how many pages that faults varies with its layout)
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a setting of glibc's malloc, on Linux")
def test_freed_activations_are_reused_not_faulted_in_again():
    """Thirty rounds of 40 MB of activations alive together, then freed (307,200 pages touched).
    Mapped and unmapped block by block (what glibc's default does until its dynamic threshold
    rises, and again whenever it trims the heap's top) every round faults its pages in again; after
    keep_freed_memory() the heap keeps them, with or without torch's huge-page alignment
    (THP_MEM_ALLOC_ENABLE, which minigpt's entry points set). The heap takes a few rounds to settle,
    longer with that alignment: counted from the 2nd round, 512-9,234 faults; from the 4th, up to
    5,130 with it; from the 11th, 0-513 in every run here. The setting is the process's: a child each."""
    def faults(mode: str, thp: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS_PROBE, mode], capture_output=True, text=True,
                             check=True, cwd=Path(bench.__file__).parents[1],
                             env={**os.environ, "THP_MEM_ALLOC_ENABLE": thp})
        return int(out.stdout)
    pages = 30 * 40 * 256
    assert faults("unmap", "0") > 0.9 * pages  # the probe sees refaulting where it happens
    assert faults("keep", "0") < pages / 50 and faults("keep", "1") < pages / 50


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_target_plan_grows_as_the_target_falls(optimizer):
    from minigpt import train
    table, tokens = ((train.PLAN_TABLE, train.PLAN_TOKENS_PER_STEP) if optimizer == "adamw"
                     else (train.MUON_PLAN_TABLE, train.MUON_PLAN_TOKENS_PER_STEP))
    plan = lambda target, per_step=None: train.plan_iters(target, per_step, optimizer)  # noqa: E731
    plans = [plan(t) for t in (2.3, 2.0, 1.9, 1.8, 1.6, 1.5)]
    assert plans == sorted(plans) and plans[0] >= 1
    assert abs(plan(1.9, 2 * tokens) - plan(1.9) / 2) <= 1  # the same tokens
    for steps, loss in table[1:-1]:
        assert abs(plan(loss + train.PLAN_MARGIN) - steps) <= 1  # a schedule that ends a margin below


def test_bf16_training_path_matches_fp32(tiny_gpt):
    """Under CPU bf16 autocast a training step takes the explicit attention path; its loss and
    gradients agree with the fp32 fused path to bf16 precision."""
    import torch
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 40, (4, 16), generator=g), torch.randint(0, 40, (4, 16), generator=g)
    ref = tiny_gpt(x, y)[1]
    ref.backward()
    ref_grads = [p.grad.clone() for p in tiny_gpt.parameters()]
    tiny_gpt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = tiny_gpt(x, y)[1]
    loss.backward()
    assert abs(loss.item() - ref.item()) < 2e-2
    for a, p in zip(ref_grads, tiny_gpt.parameters()):
        assert torch.nn.functional.cosine_similarity(a.flatten(), p.grad.flatten(), dim=0) > 0.99


def test_target_run_decays_over_its_plan_and_checks_near_its_end_and_after(small_text):
    import torch

    from minigpt.data import split_ids
    from minigpt.tokenizers import CharTokenizer
    from minigpt.train import Eval, Run, Step, TrainConfig, train
    tok = CharTokenizer.from_text(small_text)
    run = Run.create(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32), tok,
                     split_ids(torch.tensor(tok.encode(small_text))), device="cpu", dtype="float32")
    cfg = TrainConfig(max_iters=30, plan_iters=20, target_val_loss=0.01, eval_interval=100, eval_iters=1,
                      warmup_iters=2, batch_size=4)
    events = list(train(run, cfg))
    lrs = {e.iter: e.lr for e in events if isinstance(e, Step)}
    assert lrs[20] < 2 * cfg.min_lr and lrs[21] == lrs[30] == cfg.min_lr  # then min_lr to max_iters
    assert lrs[10] > 10 * cfg.min_lr
    # the last 20% of the plan, each step, then every tenth of the plan (2 steps) until max_iters
    assert [e.iter for e in events if isinstance(e, Eval)] == [16, 17, 18, 19, 20, 22, 24, 26, 28, 30]
    assert all(e.train_loss is None for e in events if isinstance(e, Eval))  # checks: the val estimate only
    assert events[-1].reason == "max_iters" and events[-1].final_val_loss > 0.01


def test_a_short_muon_plan_trains_with_the_short_plan_recipe(small_text):
    """A fresh Muon target run planned under SHORT_PLAN steps takes SHORT_PLAN_RECIPE where its config
    has the defaults (a value set by hand stays), and its run card says what it trained with; a long
    plan, AdamW and a run without a target keep their config."""
    import torch

    from minigpt.data import split_ids
    from minigpt.tokenizers import CharTokenizer
    from minigpt.train import SHORT_PLAN, SHORT_PLAN_RECIPE, Run, TrainConfig, short_plan_recipe, train
    default = TrainConfig()
    assert short_plan_recipe(default, SHORT_PLAN - 1) == TrainConfig(**SHORT_PLAN_RECIPE)
    assert short_plan_recipe(TrainConfig(muon_lr=0.02), 200).muon_lr == 0.02
    assert short_plan_recipe(TrainConfig(muon_lr=0.02), 200).warmup_iters == SHORT_PLAN_RECIPE["warmup_iters"]
    for cfg, horizon in ((default, SHORT_PLAN), (TrainConfig(optimizer="adamw"), 100)):
        assert short_plan_recipe(cfg, horizon) == cfg
    tok = CharTokenizer.from_text(small_text)

    def card(**kw):
        run = Run.create(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32), tok,
                         split_ids(torch.tensor(tok.encode(small_text))), device="cpu", dtype="float32")
        list(train(run, TrainConfig(max_iters=4, eval_interval=100, eval_iters=1, batch_size=4, **kw)))
        return {k: run.last_train_config[k] for k in SHORT_PLAN_RECIPE}
    assert card(target_val_loss=0.01, plan_iters=3) == SHORT_PLAN_RECIPE
    assert card() == {k: getattr(default, k) for k in SHORT_PLAN_RECIPE}


def test_bf16_inference_weights_match_fp32_logits():
    """bf16 weights (what bench times for decoding where the CPU has bf16) give the fp32 model's
    next-token distribution within 0.01 of probability, and the same top token almost everywhere."""
    import torch

    from minigpt.model import build_model
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)
    ref_model = build_model(cfg).eval()
    bf16 = build_model(cfg)
    bf16.load_state_dict(ref_model.state_dict())
    bf16 = bf16.to(torch.bfloat16).eval()
    x = torch.randint(0, 65, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = ref_model(x)[0].float(), bf16(x)[0].float()
    assert (ref.softmax(-1) - out.softmax(-1)).abs().max() < 0.01
    assert (ref.argmax(-1) == out.argmax(-1)).float().mean() > 0.95


def test_decode_floor_counts_each_weight_once():
    from minigpt import bench
    cfg = GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)
    per_layer = 12 * 384 * 384 + 2 * 384  # attention and MLP matrices, two gains
    want = (6 * per_layer + 65 * 384 + 384 + 384) * 4  # + the tied embedding/head, a position row, ln_f
    assert bench.weight_bytes_per_token(cfg) == want
    assert bench.memory_bandwidth_gbs(megabytes=16, rounds=1) > 0
    assert bench.memory_bandwidth_gbs(megabytes=16, rounds=1, huge_pages=False) > 0
