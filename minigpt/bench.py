"""`python -m minigpt bench`: how fast minigpt is on this machine.

    python -m minigpt bench                   # a table, in a few minutes
    python -m minigpt bench --quick --json    # about a minute; the last line is one JSON object
    python -m minigpt bench --baseline        # also times nanoGPT's CPU recipe, for the ratio

It builds minigpt's compiled kernels first on a CPU (~30 s once; minigpt/decode_kernel.py), then
measures training tokens/s of the trainer itself (`train()`, fp32 and the fast path: bf16 autocast
where it pays, device.cpu_bf16_pays, else fp32 again; the fast path also without the compiled
kernels, to show their share) for the 4-layer, 128-wide, context-64 model at the default batch;
generation tokens/s with and without the KV cache (6 layers, 384 wide, context 256, random weights:
speed does not depend on them), the cached steps through the compiled decoding step and on the
eager model, next to the step's floor (its weights' bytes over the memory bandwidth, measured in
the same round); the app's cold start (launch app.py, poll its port until it answers); and the
peak memory (RSS) of a `python -m minigpt train` run of the default model.
Timings on a shared machine are noisy: fp32, the fast path and (with --baseline) nanoGPT's CPU
recipe are measured in alternating rounds and the best round of each is reported, so the ratio
compares best with best.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import TORCH_ENV, hugepages
from .data import Splits, data_dir
from .device import cpu_has_native_bf16, pick_precision
from .model import GPTConfig
from .train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
BASELINE_SCRIPT = ROOT.parent / "shared" / "bench" / "nanogpt_cpu_recipe.py"
KEYS = ("train_tokens_per_s", "train_tokens_per_s_fp32", "gen_tokens_per_s_cache", "gen_tokens_per_s_nocache",
        "cold_start_s", "peak_rss_mb", "device", "dtype", "optimizer", "decode_step_ms", "decode_floor_ms")


@dataclass(frozen=True)
class Sizes:
    """What one bench measures and for how long."""
    train_model: GPTConfig      # the model whose training speed is measured
    train_steps: int            # steps per timed round (the first third warms up, untimed)
    train_rounds: int           # rounds of each precision, alternating
    gen_model: GPTConfig        # the model that generates
    gen_tokens: int             # new tokens per generation
    gen_rounds: int
    memory_iters: int           # steps of the `train` subprocess whose peak RSS is reported
    cold_start: bool = True     # launch app.py (when there is one)


FULL = Sizes(train_model=GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
             train_steps=150, train_rounds=3,
             gen_model=GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384),
             gen_tokens=256, gen_rounds=3, memory_iters=100)
QUICK = replace(FULL, train_steps=90, train_rounds=2, gen_rounds=1, memory_iters=30)


# ---- measurements -------------------------------------------------------------------------------

def _synthetic_ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _char_tokenizer(vocab: int):
    from .tokenizers import CharTokenizer
    return CharTokenizer([chr(0x100 + i) for i in range(vocab)])  # any distinct characters will do


def train_tokens_per_s(model: GPTConfig, dtype: str, steps: int, batch_size: int | None = None,
                       device: str = "cpu", kernels: bool = True) -> float:
    """Training tokens/s of `train()` for `model` on random tokens, over the last two thirds of `steps`
    (`kernels=False`: the eager model and torch's Muon ops even where the compiled kernels are built)."""
    from .train import Run, Step, train
    cfg = TrainConfig(max_iters=steps, eval_interval=steps + 1, sample_every=0, device=device, dtype=dtype)
    if batch_size is not None:
        cfg.batch_size = batch_size
    ids = _synthetic_ids(max(200_000, 4 * model.block_size * cfg.batch_size), model.vocab_size)
    run = Run.create(replace(model), _char_tokenizer(model.vocab_size), Splits(train=ids, val=ids[:0]),
                     device=device, dtype=dtype)
    run.model.set_training_kernels(kernels)
    warm = max(1, steps // 3)
    first = last = None
    for ev in train(run, cfg):
        if isinstance(ev, Step):  # every step on a CPU, every 10th on a GPU
            if first is None and ev.iter >= warm:
                first = ev
            last = ev
    if first is None or last is None or last.iter <= first.iter:
        raise ValueError("too few training steps to time")
    return (last.iter - first.iter) * cfg.batch_size * model.block_size / (last.elapsed - first.elapsed)


def timed_generation(model_cfg: GPTConfig, tokens: int, use_cache: bool, seed: int = 0, device: str = "cpu",
                     weights: torch.dtype = torch.float32, kernel: bool = True) -> tuple[float, float]:
    """(tokens/s of the whole `generate()` call, mean ms from one token to the next): the second is
    the decoding step as a user's generation runs it (sampling and the top-10 included), without
    the setup and the prompt's pass before the first token."""
    from .generate import generate
    from .model import build_model
    torch.manual_seed(seed)
    model = build_model(replace(model_cfg)).to(device=device, dtype=weights)
    tokenizer = _char_tokenizer(model_cfg.vocab_size)
    prompt = ""  # the default start: one token, as `sample` without --prompt
    t0 = time.perf_counter()
    stamps = [time.perf_counter() for _ in generate(model, tokenizer, prompt, tokens, seed=seed,
                                                    use_cache=use_cache, kernel=kernel)]
    step_ms = 1000 * (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return len(stamps) / (stamps[-1] - t0), step_ms


def memory_bandwidth_gbs(megabytes: int = 256, rounds: int = 5, huge_pages: bool = True) -> float:
    """Read bandwidth (GB/s): the best of `rounds` sums over a tensor far larger than the caches, in
    huge pages where the OS has them (as the decoding step's weights are: in 4 KiB pages the page
    walks slow the reads, ~20-30% here, and the floor would be set too low)."""
    n = megabytes * 2**20
    x = hugepages.buffer(n, huge=huge_pages).view(torch.float32).fill_(1.0)
    x.sum()  # touch every page first
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def weight_bytes_per_token(model_cfg: GPTConfig) -> int:
    """Bytes of weights one cached decoding step reads: every matrix and gain once (the tied embedding
    as the LM head), one row of the position table."""
    from .model import build_model
    with torch.device("meta"):
        model = build_model(replace(model_cfg))
    total = 0
    for name, p in model.named_parameters():  # a tied tensor is listed once
        rows = 1 if name.endswith("wpe.weight") else p.shape[0]
        total += rows * (p.numel() // p.shape[0]) * 4  # fp32 weights
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_cold_start(app: Path = ROOT / "app.py", timeout: float = 180.0) -> float | None:
    """Seconds from launching `python app.py` until its port answers HTTP; None without app.py."""
    if not app.exists():
        return None
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(app)], cwd=app.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < timeout and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    return time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
        return None
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate a child process, and kill it if it has not exited after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def train_peak_rss_mb(iters: int, extra: list[str] | None = None) -> float | None:
    """Peak RSS (MB) of `python -m minigpt train` of the default model for `iters` steps: on Tiny
    Shakespeare when it is in the data folder, else on a synthetic text of the same size."""
    with tempfile.TemporaryDirectory() as tmp:
        data = "shakespeare"
        if not (data_dir() / "tinyshakespeare.txt").exists():
            chars = _char_tokenizer(65).decode(_synthetic_ids(1_100_000, 65).tolist())
            Path(tmp, "text.txt").write_text(chars, encoding="utf-8")
            data = str(Path(tmp, "text.txt"))
        cmd = [sys.executable, "-m", "minigpt", "train", "--data", data, "--max-iters", str(iters),
               "--eval-interval", str(iters), "--out", str(Path(tmp, "m.safetensors")), "--log-json",
               *(extra or [])]
        return peak_rss_mb(cmd, cwd=ROOT)


def peak_rss_mb(cmd: list[str], cwd: Path = ROOT, poll: float = 0.02) -> float | None:
    """Peak RSS (MB) of the command run to its end, or None if it fails.

    Not the child's rusage: Linux carries a process's high-water mark across fork and exec, so a
    child's ru_maxrss is at least its parent's RSS (a bench at 900 MB reported that for any child).
    Where there is /proc, the child's own VmHWM (its new address space's high-water mark) is read
    until it exits; a peak in its last `poll` seconds would be missed."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status_file, peak_kb = Path(f"/proc/{proc.pid}/status"), None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG if status_file.exists() else 0)
        if pid:  # it has exited (and is reaped)
            break
        try:
            hwm = next((line for line in status_file.read_text().splitlines() if line.startswith("VmHWM:")), None)
        except OSError:  # it exited just now
            hwm = None
        if hwm is not None:
            peak_kb = max(peak_kb or 0, int(hwm.split()[1]))
        time.sleep(poll)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return None
    if peak_kb is None:  # no /proc (macOS: bytes; there fork does not carry the parent's peak)
        peak_kb = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return peak_kb / 1024


def run_baseline(iters: int) -> dict | None:
    """nanoGPT's CPU recipe (../shared/bench/nanogpt_cpu_recipe.py) for `iters` steps, when it is there."""
    text = data_dir() / "tinyshakespeare.txt"
    if not BASELINE_SCRIPT.exists() or not text.exists():
        return None
    env = {k: v for k, v in os.environ.items() if k not in TORCH_ENV}  # the recipe as its users run it
    r = subprocess.run([sys.executable, str(BASELINE_SCRIPT), str(text), "--iters", str(iters)],
                       capture_output=True, text=True, timeout=1800, env=env)
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[-1]) if r.returncode == 0 and lines else None


def measure(sizes: Sizes = FULL, baseline: bool = False, log=None, device: str = "cpu") -> dict:
    """Every figure of the bench, as a dict with the KEYS (and the baseline's, if asked)."""
    from .device import pick_device
    log = log or (lambda msg: None)
    device = pick_device(device)
    fast = pick_precision(device, "auto", sizes.train_model.n_embd).dtype
    out: dict = {"device": device, "dtype": fast, "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "machine": platform.machine(), "batch_size": TrainConfig().batch_size,
                 "optimizer": TrainConfig().optimizer}
    out["decode_path"] = out["train_attention"] = "eager"
    if device == "cpu":  # training's attention and the cached decoding steps use the kernels once built
        log("the compiled kernels (a C++ build, ~30 s the first time) ...")
        try:
            from .decode_kernel import load
            load(build=True)
            out["decode_path"] = out["train_attention"] = "kernel"
        except RuntimeError as e:
            out["kernel_error"] = str(e)
    log(f"training speed, {sizes.train_rounds} rounds of fp32 and {fast}"
        + (" and nanoGPT's CPU recipe" if baseline else "") + " ...")
    kinds = {"float32": ("float32", True), fast: (fast, True)}
    if out["train_attention"] == "kernel":  # and without the kernels, to show what they give
        kinds["eager"] = (fast, False)
    speeds: dict[str, list[float]] = {k: [] for k in kinds}
    recipe: list[float] = []
    for _ in range(sizes.train_rounds):
        if baseline:  # a round of the recipe in each round of ours, and the best of each: the same luck
            b = run_baseline(200 if sizes.train_rounds < 3 else 400)
            recipe += [b["tokens_per_s"]] if b else []
        for kind, (dtype, kernel) in kinds.items():
            speeds[kind].append(train_tokens_per_s(sizes.train_model, dtype, sizes.train_steps, device=device,
                                                   kernels=kernel))
    out["train_tokens_per_s_fp32"] = round(max(speeds["float32"]))
    out["train_tokens_per_s"] = round(max(speeds[fast]))
    if "eager" in speeds:
        out["train_tokens_per_s_eager_attention"] = round(max(speeds["eager"]))
    if baseline:
        b = out["baseline_tokens_per_s"] = max(recipe) if recipe else None
        out["baseline_rounds"] = recipe
        out["train_speedup_vs_baseline"] = round(out["train_tokens_per_s"] / b, 2) if b else None
    log("generation speed, with and without the KV cache ...")
    # kind: (cache, kernel, weights). bf16 weights for inference read half the bytes a token; the
    # kernel runs them on any CPU (it widens each weight as it reads it), the eager model only
    # where the CPU has native bf16 (elsewhere its bf16 products are emulated: slow).
    kinds = {"cache": (True, True, torch.float32)}
    if device == "cpu" and (out["decode_path"] == "kernel" or cpu_has_native_bf16()):
        kinds["cache_bf16"] = (True, True, torch.bfloat16)
    if out["decode_path"] == "kernel":
        kinds["cache_eager"] = (True, False, torch.float32)
    kinds["nocache"] = (False, False, torch.float32)
    gen: dict[str, list[float]] = {k: [] for k in kinds}
    step: dict[str, list[float]] = {k: [] for k in kinds}
    # The cached step reads every weight once: its floor is those bytes over the memory bandwidth,
    # measured in each round just before its cached steps (the machine's bandwidth swings from one
    # minute to the next), and each step is compared with its own round's floor.
    weight_mb = weight_bytes_per_token(sizes.gen_model) / 1e6
    bandwidths: list[float] = []
    small_pages: list[float] = []  # the same sum in 4 KiB pages, to show what huge pages give
    for _ in range(sizes.gen_rounds):
        bandwidths.append(memory_bandwidth_gbs())
        small_pages.append(memory_bandwidth_gbs(huge_pages=False))
        for kind, (cache, kernel, weights) in kinds.items():
            speed, step_ms = timed_generation(sizes.gen_model, sizes.gen_tokens, cache, device=device, kernel=kernel,
                                              weights=weights)
            gen[kind].append(speed)
            step[kind].append(step_ms)
    for kind in kinds:
        out[f"gen_tokens_per_s_{kind}"] = round(max(gen[kind]), 1)
    out["kv_cache_speedup"] = round(out["gen_tokens_per_s_cache"] / out["gen_tokens_per_s_nocache"], 1)
    out["decode_weight_mb"] = round(weight_mb, 1)
    out["memory_bandwidth_gbs_4k_pages"] = round(max(small_pages), 1)
    if "cache_eager" in step:
        out["decode_step_ms_eager"] = round(min(step["cache_eager"]), 2)
    # kind: (its keys' suffix, the share of the fp32 weights' bytes it reads)
    for kind, suffix, share in (("cache", "", 1.0), ("cache_bf16", "_bf16", 0.5)):
        if kind not in step:
            continue
        # MB / (GB/s) = ms; unrounded, as a tiny model's floor rounds to 0
        floors = [share * weight_mb / bw for bw in bandwidths]
        ratios = [s / f for s, f in zip(step[kind], floors)]
        r = min(range(len(ratios)), key=ratios.__getitem__)  # the best round, as for every speed here
        out[f"decode_step_ms{suffix}"] = round(step[kind][r], 3)
        out[f"decode_floor_ms{suffix}"] = round(floors[r], 3)
        out[f"decode_vs_floor{suffix}"] = round(ratios[r], 2)
        out[f"memory_bandwidth_gbs{suffix}"] = round(bandwidths[r], 1)
        out[f"decode_vs_floor{suffix}_rounds"] = [round(x, 2) for x in ratios]
    log("app cold start ...")
    cold = app_cold_start() if sizes.cold_start else None
    out["cold_start_s"] = round(cold, 2) if cold is not None else None
    log("peak memory of a training run ...")
    rss = train_peak_rss_mb(sizes.memory_iters) if sizes.memory_iters else None
    out["peak_rss_mb"] = round(rss) if rss is not None else None
    out["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


# ---- output -------------------------------------------------------------------------------------

def _num(value, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def table(r: dict, sizes: Sizes = FULL) -> str:
    """The bench results as a Markdown table (what the README shows)."""
    t, g = sizes.train_model, sizes.gen_model
    shape = f"{t.n_layer}×{t.n_head}×{t.n_embd}, context {t.block_size}, batch {r['batch_size']}, {r['optimizer']}"
    gshape = f"{g.n_layer}×{g.n_head}×{g.n_embd}, context {g.block_size}, {sizes.gen_tokens} tokens"
    attention = r.get("train_attention", "eager")
    rows = [(f"training, fp32 (attention {attention})", shape, _num(r["train_tokens_per_s_fp32"], " tok/s")),
            (f"training, fast path ({r['dtype']}, attention {attention})", shape,
             _num(r["train_tokens_per_s"], " tok/s") + f" ({r['train_tokens_per_s'] / r['train_tokens_per_s_fp32']:.1f}× fp32)")]
    if "train_tokens_per_s_eager_attention" in r:
        rows.append((f"training, fast path ({r['dtype']}, no compiled kernels)", shape,
                     _num(r["train_tokens_per_s_eager_attention"], " tok/s")))
    if "baseline_tokens_per_s" in r:
        speedup = r.get("train_speedup_vs_baseline")
        rows.append(("nanoGPT CPU recipe (fp32)", "4×4×128, context 64, batch 12",
                     _num(r["baseline_tokens_per_s"], " tok/s") + (f" (fast path: {speedup}×)" if speedup else "")))
    path = r.get("decode_path", "eager")
    rows.append((f"generation, KV cache ({path})", gshape, _num(r["gen_tokens_per_s_cache"], " tok/s", 1)
                 + f" ({r['kv_cache_speedup']}× no cache)"))
    if "gen_tokens_per_s_cache_eager" in r:
        rows.append(("generation, KV cache (eager)", gshape, _num(r["gen_tokens_per_s_cache_eager"], " tok/s", 1)))
    rows += [("generation, no cache", gshape, _num(r["gen_tokens_per_s_nocache"], " tok/s", 1)),
             (f"decode step vs its floor ({path})",
              f"{r['decode_weight_mb']} MB of weights ÷ {r['memory_bandwidth_gbs']} GB/s"
              + (f" (4 KiB pages: {r['memory_bandwidth_gbs_4k_pages']})" if "memory_bandwidth_gbs_4k_pages" in r else ""),
              f"{r['decode_step_ms']} ms vs {r['decode_floor_ms']} ms ({r['decode_vs_floor']}×)")]
    if "decode_step_ms_bf16" in r:
        rows.append((f"decode step vs its floor, bf16 weights ({path})",
                     f"{r['decode_weight_mb'] / 2:.1f} MB of weights ÷ {r['memory_bandwidth_gbs_bf16']} GB/s",
                     f"{r['decode_step_ms_bf16']} ms vs {r['decode_floor_ms_bf16']} ms ({r['decode_vs_floor_bf16']}×)"))
    rows += [("app cold start", "python app.py until the port answers", _num(r["cold_start_s"], " s", 1)),
             ("peak RSS, training", "python -m minigpt train (default model)", _num(r["peak_rss_mb"], " MB"))]
    lines = [f"minigpt bench: {r['device']} ({r['dtype']}), torch {r['torch']}, {r['threads']} threads", "",
             "| measure | setting | result |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def register(subparsers):
    p = subparsers.add_parser("bench", help="measure training and generation speed, app start and memory",
                              description="Measure minigpt on this machine: training tokens/s (fp32 and the fast "
                                          "path), generation tokens/s with and without the KV cache, the app's "
                                          "cold start and the peak memory of a training run. "
                                          "Example: python -m minigpt bench --quick")
    p.add_argument("--quick", action="store_true", help="fewer rounds: about a minute")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object, last")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (the memory figure is the CLI's own)")
    p.add_argument("--baseline", action="store_true",
                   help="also time nanoGPT's CPU recipe (../shared/bench/nanogpt_cpu_recipe.py) in each round, for the ratio")
    p.set_defaults(func=run)


def run(args) -> int:
    sizes = QUICK if args.quick else FULL
    results = measure(sizes, baseline=args.baseline, log=lambda msg: print(msg, file=sys.stderr, flush=True),
                      device=args.device)
    print(table(results, sizes))
    if args.json:
        print(json.dumps(results), flush=True)
    return 0
