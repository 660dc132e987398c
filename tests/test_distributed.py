"""Distributed training: DDP over gloo equals one process, ranks stop together, torchrun end to end.

The multi-process tests start real processes on 127.0.0.1 (gloo, CPU): this file's `_worker`,
run with the environment torchrun would give it.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minigpt.train as T
from minigpt import distributed
from minigpt.data import Splits
from minigpt.model import GPTConfig
from minigpt.tokenizers import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8


def _fixed_run():
    """A tiny GPT (dropout 0) on random ids, and one fixed (x, y) batch of BATCH sequences."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 8, (400,), generator=g)
    cfg = GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    run = T.Run.create(cfg, CharTokenizer(list("abcdefgh")), Splits(train=ids[:360], val=ids[360:]),
                       device="cpu", dtype="float32", seed=0)
    window = torch.randint(0, 8, (BATCH, 9), generator=g)
    return run, window[:, :-1], window[:, 1:]


def _one_step(run, pieces, team=None, grad_accum=1):
    """One training step whose micro-batches are `pieces`, in order, instead of random windows."""
    queue, real = list(pieces), T.get_batch

    def fixed(data, batch_size, block, gen=None, device="cpu"):
        if batch_size == len(queue[0][0]):  # a training micro-batch (loss estimates use 32)
            return queue.pop(0)
        return real(data, batch_size, block, gen, device)

    T.get_batch = fixed
    try:
        cfg = T.TrainConfig(batch_size=BATCH, grad_accum=grad_accum, max_iters=1, warmup_iters=0,
                            eval_interval=1000, sample_every=0, device="cpu", dtype="float32")
        events = list(T.train(run, cfg, team=team))
    finally:
        T.get_batch = real
    assert not queue and events[-1].reason == "max_iters"
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def _random_run():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 8, (2000,), generator=g)
    cfg = GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16)
    return T.Run.create(cfg, CharTokenizer(list("abcdefgh")), Splits(train=ids[:1800], val=ids[1800:]),
                        device="cpu", dtype="float32", seed=0)


def _worker(out_dir: str):
    """One rank of the two-process tests (run by _launch)."""
    out = Path(out_dir)
    team = distributed.setup("cpu")
    r = team.rank
    from minigpt.device import cpu_bf16_pays
    result = {"bf16": cpu_bf16_pays()}
    # 1. One step, each rank on its half of the fixed batch; then with two micro-steps each.
    run, x, y = _fixed_run()
    h = BATCH // 2
    result["ddp"] = _one_step(run, [(x[r * h:(r + 1) * h], y[r * h:(r + 1) * h])], team)
    run, x, y = _fixed_run()
    q = BATCH // 4
    result["ddp_accum"] = _one_step(run, [(x[i * q:(i + 1) * q], y[i * q:(i + 1) * q]) for i in (2 * r, 2 * r + 1)],
                                    team, grad_accum=2)
    # 2. Rank 1 alone is asked to stop after step 7: both ranks leave the loop there.
    run = _random_run()
    for ev in T.train(run, T.TrainConfig(batch_size=BATCH, max_iters=1000, eval_interval=5, eval_iters=1,
                                         sample_every=1, sample_tokens=5), team.stop, team=team):
        if r == 1 and isinstance(ev, T.Step) and ev.iter == 7:
            team.stop.set()
    result["stop"] = (ev.reason, run.iters, ev.final_val_loss is not None)
    team.stop.clear()
    # 3. A time budget: every rank follows rank 0's clock, so the schedules (and weights) stay equal.
    run = _random_run()
    for ev in T.train(run, T.TrainConfig(batch_size=BATCH, max_iters=100_000, max_seconds=1.0,
                                         eval_interval=10**6), team=team):
        pass
    result["time"] = (ev.reason, run.iters)
    result["time_weights"] = {k: v.clone() for k, v in run.model.state_dict().items()}
    torch.save(result, out / f"rank{r}.pt")
    distributed.teardown(team)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, world=2, bf16=None):
    """Run `_worker` as `world` ranks; `bf16`: each rank's own $MINIGPT_CPU_BF16 (rank 0's is the one
    they all take), by default this process's verdict, so the ranks compute as this process does."""
    from minigpt import device
    bf16 = bf16 or ["1" if device.cpu_bf16_pays() else "0"] * world
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    code = f"import test_distributed as t; t._worker({str(tmp_path)!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), device.BF16_ENV: bf16[r]},
                              stderr=subprocess.PIPE, text=True) for r in range(world)]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(errors)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_gloo_ranks_equal_one_process(tmp_path):
    ranks = _launch(tmp_path)
    run, x, y = _fixed_run()
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    whole = _one_step(run, [(x, y)])
    assert _max_diff(whole, before) > 1e-4  # the step did move the weights
    for result in ranks:
        assert _max_diff(result["ddp"], whole) < 1e-6
        assert _max_diff(result["ddp_accum"], whole) < 1e-6
    # Ranks agree on stopping, and on the clock.
    assert ranks[0]["stop"] == ("stopped", 7, True) and ranks[1]["stop"] == ("stopped", 7, False)
    assert ranks[0]["time"] == ranks[1]["time"] and ranks[0]["time"][0] == "max_seconds"
    assert _max_diff(ranks[0]["time_weights"], ranks[1]["time_weights"]) == 0.0


def test_ranks_take_rank_0s_bf16_verdict(tmp_path):
    """Each rank's own verdict on CPU bf16 (here given by $MINIGPT_CPU_BF16: rank 0 says no, rank 1
    yes) gives way to rank 0's, so the replicas compute alike."""
    ranks = _launch(tmp_path, bf16=["0", "1"])
    assert [r["bf16"] for r in ranks] == [False, False]
    assert _max_diff(ranks[0]["ddp"], ranks[1]["ddp"]) == 0.0


def test_gradient_accumulation_equals_the_whole_batch():
    run, x, y = _fixed_run()
    whole = _one_step(run, [(x, y)])
    run, x, y = _fixed_run()
    h = BATCH // 2
    accumulated = _one_step(run, [(x[:h], y[:h]), (x[h:], y[h:])], grad_accum=2)
    assert _max_diff(accumulated, whole) < 1e-6


def test_batch_must_split_evenly():
    run, _, _ = _fixed_run()
    with pytest.raises(ValueError, match="multiple of grad_accum"):
        next(T.train(run, T.TrainConfig(batch_size=BATCH, grad_accum=3)))
    with pytest.raises(ValueError, match="grad_accum"):
        T.TrainConfig(batch_size=4, grad_accum=5).validate()


def test_torchrun_environment_is_read(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.env_ranks() is None and distributed.setup("cpu") is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.env_ranks() is None  # one process: no group
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.env_ranks() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="bad torchrun environment"):
        distributed.env_ranks()
    assert distributed.team_device("cpu", 1) == "cpu"
    with pytest.raises(ValueError, match="cuda or cpu"):
        distributed.team_device("mps", 0)


@pytest.mark.slow
def test_torchrun_trains_saves_once_and_the_checkpoint_works(tmp_path, small_text):
    from minigpt.prepare import prepare
    (tmp_path / "text.txt").write_text(small_text * 5)
    prepare(tmp_path / "text.txt", "char", tmp_path / "data", quiet=True)
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "minigpt", "train", "--data", str(tmp_path / "data"), "--n-layer", "1", "--n-head", "2",
           "--n-embd", "32", "--block-size", "16", "--batch-size", "8", "--max-iters", "40", "--eval-interval", "20",
           "--eval-iters", "2", "--device", "cpu", "--log-json", "--out", str(out / "m.safetensors")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads(line) for line in p.stdout.splitlines() if line.startswith('{"val_loss"')]
    assert len(summaries) == 1 and summaries[0]["iters"] == 40 and summaries[0]["reason"] == "max_iters"
    assert [f.name for f in out.iterdir()] == ["m.safetensors"]  # one file, no temporaries
    assert sum('"event": "start"' in line for line in p.stdout.splitlines()) == 1  # rank 0 alone logs
    ev = subprocess.run([sys.executable, "-m", "minigpt", "eval", str(out / "m.safetensors"), "--data",
                         str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout.splitlines()[-1])["val_loss"] == round(summaries[0]["val_loss"], 4)
    sample = subprocess.run([sys.executable, "-m", "minigpt", "sample", str(out / "m.safetensors"), "--tokens", "20"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0 and len(sample.stdout.strip()) > 0, sample.stderr
