"""The optimizers: Muon + AdamW is torch's Muon, its state survives a checkpoint, a resume continues
the same curve, a diverging Muon run stops cleanly, and a checkpoint of the other optimizer gives a
fresh one with a note."""

import pytest
import torch

from minigpt.checkpoint import load_checkpoint, save_checkpoint
from minigpt.data import split_ids
from minigpt.model import GPTConfig
from minigpt.optim import BatchedMuon, MuonAdamW, make_optimizer, muon_split, restore_optimizer
from minigpt.tokenizers import CharTokenizer
from minigpt.train import Run, Step, TrainConfig, train

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n" * 60


@pytest.fixture(scope="module")
def data():
    tok = CharTokenizer.from_text(TEXT)
    return tok, split_ids(torch.tensor(tok.encode(TEXT)))


def _run(tok, splits, seed=0):
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return Run.create(cfg, tok, splits, device="cpu", dtype="float32", seed=seed, data_name="t")


def _cfg(**kw):
    return TrainConfig(**{"max_iters": 6, "eval_interval": 1000, "sample_every": 0, "batch_size": 4,
                          "warmup_iters": 2, "optimizer": "muon", **kw})


def test_muon_goes_to_block_matrices_only(data):
    tok, splits = data
    run = _run(tok, splits)
    hidden, decay, no_decay = muon_split(run.model)
    names = {id(p): n for n, p in run.model.named_parameters()}
    assert hidden and all(".h." in names[id(p)] and p.dim() == 2 for p in hidden)
    assert {names[id(p)] for p in decay} == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert all(p.dim() == 1 for p in no_decay)
    opt = make_optimizer(run.model, _cfg(weight_decay=0.07), "cpu")
    assert isinstance(opt, MuonAdamW) and {g["kind"] for g in opt.param_groups} == {"adamw", "muon"}
    # Both decay the matrices and embeddings alike; the gains are not decayed.
    assert [g["weight_decay"] for g in opt.param_groups] == [0.07, 0.0, 0.07]


def test_each_run_steps_with_its_own_momenta(data):
    """Muon's momentum and AdamW's beta2 are the run's config: a fresh optimizer takes them, and a
    continued run (the page's Continue keeps the optimizer) steps with its own, not the first run's."""
    tok, splits = data
    run = _run(tok, splits)

    def momenta():
        return sorted({("muon", g["momentum"]) if g["kind"] == "muon" else ("adamw", g["betas"])
                       for g in run.optimizer.param_groups})
    list(train(run, _cfg(muon_momentum=0.9, beta2=0.95)))
    assert momenta() == [("adamw", (0.9, 0.95)), ("muon", 0.9)]
    first = run.optimizer
    list(train(run, _cfg()))
    assert run.optimizer is first and momenta() == [("adamw", (0.9, 0.99)), ("muon", 0.95)]
    with pytest.raises(ValueError, match="muon_momentum"):
        _cfg(muon_momentum=1.0).validate()


@pytest.mark.parametrize("nesterov,wd", [(True, 0.0), (False, 0.1)])
def test_batched_muon_matches_torch_muon(nesterov, wd):
    torch.manual_seed(0)
    shapes = [(48, 16), (48, 16), (16, 16), (16, 64), (64, 16), (16, 64)]  # (64, 16) is stacked as (16, 64)
    a = [torch.randn(s, requires_grad=True) for s in shapes]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    ours = BatchedMuon(a, lr=0.02, weight_decay=wd, nesterov=nesterov)
    ref = torch.optim.Muon(b, lr=0.02, weight_decay=wd, nesterov=nesterov)
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for p, q in zip(a, b):  # bf16 Newton–Schulz: the same arithmetic, batched (matmul order may differ)
        assert torch.allclose(p, q, atol=2e-3), (p - q).abs().max()
        assert torch.equal(ours.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])


def test_polar_express_maps_each_singular_value_through_its_polynomials():
    """Newton–Schulz acts on singular values alone: with the Polar Express schedule each σ of the
    normalised matrix goes through p3(p2(p1(σ))) and the singular vectors stay (float64, exact)."""
    from minigpt.optim import POLAR_EXPRESS, POLAR_EXPRESS_STEPS, _ns_batched
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(64, 16, dtype=torch.float64))
    sigma = torch.logspace(-3, 0, 16, dtype=torch.float64)
    g = (u * sigma) @ v.T                                   # singular values 1e-3 … 1
    schedule = POLAR_EXPRESS[:POLAR_EXPRESS_STEPS]
    out = _ns_batched(g[None], schedule, 1e-7, torch.float64, norm_scale=1.01)[0]
    s = sigma / (sigma.norm() * 1.01)
    for a, b, c in schedule:
        s = a * s + b * s**3 + c * s**5
    assert torch.allclose(out, (u * s) @ v.T, atol=1e-12)
    # What 3 iterations buy: every direction, down to a thousandth of the largest, ends within
    # 0.1-1.9 (torch's quintic 3 times leaves the smallest at ~0.04, and learned 0.1 worse per step).
    assert 0.1 < s.min() and s.max() < 1.9 and s[0] > 50 * sigma[0] / (sigma.norm() * 1.01)


def test_one_schedule_drives_both_peaks(data):
    tok, splits = data
    run = _run(tok, splits)
    cfg = _cfg(lr=4e-3, muon_lr=0.04, max_iters=4)
    list(train(run, cfg))
    groups = run.optimizer.param_groups
    adam = [g for g in groups if g["kind"] == "adamw"][0]
    muon = [g for g in groups if g["kind"] == "muon"][0]
    assert muon["lr"] / adam["lr"] == pytest.approx(0.04 / 4e-3)


def test_muon_state_round_trip(data, tmp_path):
    tok, splits = data
    run = _run(tok, splits)
    list(train(run, _cfg()))
    path = save_checkpoint(tmp_path / "m.safetensors", run.model, tok, run.run_card(), run.optimizer)
    ck = load_checkpoint(path)
    assert ck.optimizer_state["type"] == "MuonAdamW"
    opt, note = restore_optimizer(ck.model, _cfg(), "cpu", ck.optimizer_state)
    assert note == "" and isinstance(opt, MuonAdamW)
    a, b = run.optimizer.state_dict()["state"], opt.state_dict()["state"]
    assert a.keys() == b.keys() and len(a) == len(list(run.model.parameters()))
    for k in a:
        assert a[k].keys() == b[k].keys()
        for key in a[k]:
            assert torch.equal(torch.as_tensor(a[k][key]).float(), torch.as_tensor(b[k][key]).float()), (k, key)


@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_resume_from_a_checkpoint_continues_the_same_curve(data, tmp_path, kind):
    tok, splits = data
    first, second = _cfg(optimizer=kind), _cfg(optimizer=kind, max_iters=5)
    run = _run(tok, splits)
    list(train(run, first))
    path = save_checkpoint(tmp_path / "r.safetensors", run.model, tok, run.run_card(), run.optimizer)
    in_memory = [e.loss for e in train(run, second) if isinstance(e, Step)]

    ck = load_checkpoint(path)
    resumed = Run(model=ck.model, tokenizer=tok, splits=splits, precision=run.precision, iters=ck.training["iters"])
    resumed.optimizer, note = restore_optimizer(resumed.model, second, "cpu", ck.optimizer_state)
    assert note == ""
    from_file = [e.loss for e in train(resumed, second) if isinstance(e, Step)]
    assert from_file == pytest.approx(in_memory, abs=1e-5)

    fresh = Run(model=load_checkpoint(path).model, tokenizer=tok, splits=splits, precision=run.precision,
                iters=ck.training["iters"])
    without_state = [e.loss for e in train(fresh, second) if isinstance(e, Step)]
    assert without_state != pytest.approx(in_memory, abs=1e-5)  # the state is what made them equal


def test_state_of_the_other_optimizer_gives_a_fresh_one_and_a_note(data, tmp_path):
    tok, splits = data
    run = _run(tok, splits)
    list(train(run, _cfg(optimizer="adamw")))
    path = save_checkpoint(tmp_path / "a.safetensors", run.model, tok, run.run_card(), run.optimizer)
    ck = load_checkpoint(path)
    opt, note = restore_optimizer(ck.model, _cfg(optimizer="muon"), "cpu", ck.optimizer_state)
    assert isinstance(opt, MuonAdamW) and not opt.state_dict()["state"]
    assert "AdamW" in note and "fresh" in note and "\n" not in note


@pytest.fixture
def fresh_probe():
    from minigpt import device
    device.cpu_bf16_pays.cache_clear()
    yield device
    device.cpu_bf16_pays.cache_clear()


def test_bf16_is_taken_on_a_cpu_only_where_its_measured_matmul_is_clearly_faster(fresh_probe, monkeypatch):
    """`auto` on a CPU: bf16 autocast and bf16 Newton–Schulz only where the CPU has native bf16 and the
    probe times its matmul at ≤ 85% of fp32's; otherwise fp32 (a Xeon whose AVX512-BF16 is slower than
    its fp32 FMAs trains 1.3-1.6x slower in bf16). Timings are replaced here: 1 ms for fp32 and
    `ratio` ms for bf16, so the test decides, not the machine."""
    device = fresh_probe
    from minigpt.optim import ns_dtype_for

    def fake_clock(ratio):
        # each call reads the clock twice: one call of each to warm up, then rounds of both, bf16 first
        # in even rounds and fp32 first in odd ones
        rounds = [(0.0, ratio * 1e-3, 0.0, 1e-3) if i % 2 == 0 else (0.0, 1e-3, 0.0, ratio * 1e-3)
                  for i in range(device.PROBE_ROUNDS)]
        ticks = iter([t for r in [(0.0, 1.0, 0.0, 1.0)] + rounds for t in r])
        return lambda: next(ticks)

    monkeypatch.delenv(device.BF16_ENV, raising=False)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    for ratio, bf16 in ((0.5, True), (0.85, True), (0.95, False), (1.6, False)):
        device.cpu_bf16_pays.cache_clear()
        monkeypatch.setattr(device.time, "perf_counter", fake_clock(ratio))
        assert device.pick_precision("cpu", "auto", 128).dtype == ("bfloat16" if bf16 else "float32")
        assert ns_dtype_for("cpu") == (torch.bfloat16 if bf16 else torch.float32)  # cached: no clock read
        assert device.pick_precision("cpu", "auto", 384).dtype == device.pick_precision("cpu").dtype
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    device.cpu_bf16_pays.cache_clear()
    assert not device.cpu_bf16_pays() and device.pick_precision("cpu").dtype == "float32"
    assert device.pick_precision("cpu", "bfloat16").dtype == "bfloat16"  # asked for: given
    assert ns_dtype_for("cuda") == torch.bfloat16
    for given in ("1", "0"):  # given, not measured (torchrun's ranks take rank 0's this way)
        monkeypatch.setenv(device.BF16_ENV, given)
        device.cpu_bf16_pays.cache_clear()
        assert device.cpu_bf16_pays() is (given == "1")


def test_the_real_probe_answers_once_and_never_without_native_bf16(fresh_probe):
    first = fresh_probe.cpu_bf16_pays()
    assert isinstance(first, bool) and fresh_probe.cpu_bf16_pays() is first
    assert fresh_probe.cpu_bf16_pays.cache_info().misses == 1
    if not fresh_probe.cpu_has_native_bf16():
        assert first is False


def test_muon_with_fp32_newton_schulz_through_the_kernels_steps_as_through_torch():
    """fp32 Newton–Schulz (a CPU where bf16 is slow) through the compiled stack and update: the
    iterations start from the bf16-rounded stack and their result is applied in bf16, so the weights
    move as torch's fp32 path moves them to bf16 precision."""
    from minigpt import decode_kernel
    from minigpt.optim import POLAR_EXPRESS
    decode_kernel.load(build=True)
    gen = torch.Generator().manual_seed(6)
    shapes = [(32, 32), (32, 96), (96, 32)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    runs = []
    for use_kernel in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = BatchedMuon(params, lr=0.02, weight_decay=0.1, ns_dtype=torch.float32, ns_schedule=POLAR_EXPRESS[:3],
                          use_kernel=use_kernel)
        assert (opt._kernel(params, params) is not None) == use_kernel
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        runs.append(params)
    for p, q, p0 in zip(*runs, start):
        assert torch.allclose(p, q, atol=2e-3) and (p - p0).abs().max() > 0.02


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_steps_exactly_as_torchs(fused):
    """minigpt's AdamW only skips the wrapper of torch's step: the same arithmetic, to the bit."""
    from minigpt.optim import AdamW
    torch.manual_seed(0)
    ref = [torch.randn(8, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    ours = [p.detach().clone().requires_grad_() for p in ref]
    kw = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, fused=fused)
    opts = torch.optim.AdamW(ref, **kw), AdamW(ours, **kw)
    for step in range(3):
        g = [torch.randn_like(p) for p in ref]
        for params, opt in zip((ref, ours), opts):
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ref, ours)) and torch.is_grad_enabled()


def test_training_never_imports_dynamo():
    """torch imports torch._dynamo (~2 s, more than torch) for an optimizer's first step and methods;
    minigpt never compiles, and a training process (both optimizers, a checkpoint's state round trip)
    never loads it."""
    code = """
import sys, threading
from minigpt.cli import build_parser, build_run
from minigpt.limits import Limits
from minigpt.optim import skip_dynamo_import
from minigpt.train import TrainConfig, train
limits = Limits.from_env()
for kind in ("muon", "adamw"):
    run = build_run(build_parser().parse_args(["train", "--n-embd", "32", "--n-layer", "1", "--n-head", "2",
                                               "--block-size", "16"]), limits)
    cfg = TrainConfig(optimizer=kind, max_iters=3, eval_interval=2, batch_size=4)
    for _ in train(run, cfg, threading.Event(), limits):
        pass
    run.optimizer.load_state_dict(run.optimizer.state_dict())
print(skip_dynamo_import(), "torch._dynamo" in sys.modules)
"""
    import subprocess
    import sys
    from pathlib import Path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["True", "False"], out.stdout + out.stderr
