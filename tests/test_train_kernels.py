"""The compiled training attention, LayerNorm and GELU against F.scaled_dot_product_attention,
nn.LayerNorm, F.gelu and the eager model; the training threads' placement."""

import os
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minigpt import decode_kernel, train_kernels
from minigpt.model import GPTConfig, build_model
from minigpt.optim import make_optimizer
from minigpt.train import TrainConfig


@pytest.fixture(scope="module")
def kernel():
    return decode_kernel.load(build=True)  # ~30 s the first time on a machine, then cached


def _grads(fn, qkv, dy):
    x = qkv.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(dy)
    return y.detach(), x.grad


@pytest.mark.parametrize("B,T,C,n_head", [
    (2, 64, 128, 4),    # the default model's shape
    (3, 13, 40, 5),     # head size 8, T no multiple of 4 or 16
    (2, 1, 32, 2),      # one position
    (1, 70, 96, 3),     # T past a multiple of 16, head size 32
    (2, 130, 144, 3),   # head size 48: three vectors
])
def test_attention_equals_sdpa_forward_and_backward(kernel, B, T, C, n_head):
    gen = torch.Generator().manual_seed(T)
    qkv = torch.randn(B, T, 3 * C, generator=gen, dtype=torch.float64)
    dy = torch.randn(B, T, C, generator=gen, dtype=torch.float64)
    want_y, want_g = _grads(lambda x: train_kernels.reference_attention(x, n_head), qkv, dy)
    y, g = _grads(lambda x: train_kernels.attention(x, n_head, kernel), qkv.float(), dy.float())
    assert y.dtype == g.dtype == torch.float32 and g.shape == qkv.shape
    assert torch.allclose(y.double(), want_y, atol=2e-6, rtol=0)
    assert torch.allclose(g.double(), want_g, atol=1e-5, rtol=0)


def test_attention_in_bfloat16_keeps_its_dtype_and_fp32_arithmetic(kernel):
    """Under autocast c_attn's output is bf16: the kernel takes it as it is, computes in fp32 and
    rounds once, so it is as close to the fp32 reference as bf16 allows (one rounding)."""
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(4, 64, 3 * 128, generator=gen).bfloat16()
    dy = torch.randn(4, 64, 128, generator=gen).bfloat16()
    y, g = _grads(lambda x: train_kernels.attention(x, 4, kernel), qkv, dy)
    want_y, want_g = _grads(lambda x: train_kernels.reference_attention(x, 4), qkv.double(), dy.double())
    assert y.dtype == g.dtype == torch.bfloat16
    assert (y.double() - want_y).abs().max() <= 2 ** -8 * want_y.abs().max()
    assert (g.double() - want_g).abs().max() <= 2 ** -8 * want_g.abs().max()


def test_the_kernel_is_softmax_safe_for_large_scores(kernel):
    """Scores far apart (a confident head) neither overflow nor turn the weights into NaN."""
    qkv = torch.zeros(1, 16, 3 * 16)
    qkv[..., :16] = 60.0
    qkv[:, ::2, 16:32] = 60.0
    qkv[..., 32:] = torch.arange(16.0)[:, None]
    y, g = _grads(lambda x: train_kernels.attention(x, 1, kernel), qkv, torch.ones(1, 16, 16))
    want_y, want_g = _grads(lambda x: train_kernels.reference_attention(x, 1), qkv.double(), torch.ones(1, 16, 16).double())
    assert torch.isfinite(y).all() and torch.isfinite(g).all()
    assert torch.allclose(y.double(), want_y, atol=1e-5) and torch.allclose(g.double(), want_g, atol=1e-3)


def _norm_grads(fn, x, w, b, dy):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = b.clone().requires_grad_() if b is not None else None
    y = fn(x, w, b)
    y.backward(dy.to(y.dtype))
    return [y.detach(), x.grad, w.grad] + ([b.grad] if b is not None else [])


@pytest.mark.parametrize("C,bias", [(128, False), (37, True), (384, True)])  # the default width, a ragged one, a wide one
def test_layer_norm_equals_nn_layernorm_forward_and_backward(kernel, C, bias):
    gen = torch.Generator().manual_seed(C)
    x = torch.randn(203, C, generator=gen, dtype=torch.float64) * 3 + 1  # rows not a multiple of the 4 done together
    w = torch.randn(C, generator=gen, dtype=torch.float64)
    b = torch.randn(C, generator=gen, dtype=torch.float64) if bias else None
    dy = torch.randn(203, C, generator=gen, dtype=torch.float64)
    want = _norm_grads(lambda x, w, b: F.layer_norm(x, (C,), w, b, 1e-5), x, w, b, dy)
    got = _norm_grads(lambda x, w, b: train_kernels.layer_norm(x, w, b, 1e-5, kernel), x.float(), w.float(),
                      None if b is None else b.float(), dy.float())
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    for g, r, tol in zip(got, want, (3e-6, 2e-6, 5e-5, 5e-5)):  # (dw and db sum 203 rows)
        assert torch.allclose(g.double(), r, atol=tol, rtol=0)


def test_layer_norm_under_autocast_writes_bf16_as_autocast_would_cast_it(kernel):
    """Under CPU bf16 autocast the output is nn.LayerNorm's fp32 output rounded once to bf16 (what the
    next Linear would cast it to), and the gradients are fp32, as the residual stream's."""
    gen = torch.Generator().manual_seed(0)
    x, w, dy = torch.randn(64, 128, generator=gen), torch.randn(128, generator=gen), torch.randn(64, 128, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, dx, dw = _norm_grads(lambda x, w, b: train_kernels.layer_norm(x, w, b, 1e-5, kernel), x, w, None, dy)
    assert y.dtype == torch.bfloat16 and dx.dtype == dw.dtype == torch.float32
    ref = F.layer_norm(x, (128,), w, None, 1e-5)
    assert (y.float() - ref).abs().max() <= 2 ** -8 * ref.abs().max()  # one rounding
    _, want_dx, want_dw = _norm_grads(lambda x, w, b: F.layer_norm(x, (128,), w, b, 1e-5), x, w, None,
                                      dy.bfloat16().float())  # the bf16 gradient it was given
    assert torch.allclose(dx, want_dx, atol=1e-5) and torch.allclose(dw, want_dw, atol=1e-4)


@pytest.mark.parametrize("a_dtype", [torch.float32, torch.bfloat16])
def test_the_residual_add_and_layer_norm_in_one_kernel_equal_the_two_ops(kernel, a_dtype):
    """(x + a, LayerNorm(x + a)) and the gradients of x, a and the gain, with a sublayer's output a in
    fp32 or bf16 (its dtype under autocast): the same as torch's add and F.layer_norm, a's gradient
    in a's dtype; when both outputs feed the loss, the stream's gradient is added to the norm's."""
    gen = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(2, 50, 72, generator=gen), torch.randn(72, generator=gen), torch.randn(72, generator=gen)
    a = torch.randn(2, 50, 72, generator=gen).to(a_dtype)
    ds, dy = torch.randn(2, 50, 72, generator=gen), torch.randn(2, 50, 72, generator=gen)

    def run(fn):
        xs, as_, ws = x.clone().requires_grad_(), a.clone().requires_grad_(), w.clone().requires_grad_()
        s, y = fn(xs, as_, ws)
        torch.autograd.backward([s, y], [ds, dy])
        return s.detach(), y.detach(), xs.grad, as_.grad, ws.grad

    got = run(lambda x, a, w: train_kernels.add_layer_norm(x, a, w, b, 1e-5, kernel))
    want = run(lambda x, a, w: (lambda s: (s, F.layer_norm(s, (72,), w, b, 1e-5)))(x + a))
    assert got[0].dtype == got[1].dtype == torch.float32 and got[3].dtype == a_dtype
    for g, r, tol in zip(got, want, (0, 3e-6, 3e-6, 2 ** -8 if a_dtype == torch.bfloat16 else 3e-6, 5e-5)):
        assert torch.allclose(g.float(), r.float(), atol=tol * max(1.0, r.abs().max().item()), rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2 ** -7)])
def test_gelu_equals_f_gelu_forward_and_backward(kernel, dtype, tol):
    """F.gelu (exact, erf) and its gradient, in fp32 and bf16, with values past erf's saturation and
    a length no multiple of 16."""
    gen = torch.Generator().manual_seed(1)
    u = torch.cat([torch.randn(1000, generator=gen) * 3, torch.tensor([-30.0, -9.0, 0.0, 9.0, 30.0])]).to(dtype)
    dy = torch.randn(u.shape, generator=gen).to(dtype)
    x = u.clone().requires_grad_()
    y = train_kernels.gelu(x, kernel)
    y.backward(dy)
    ref = u.double().requires_grad_()
    want = F.gelu(ref)
    want.backward(dy.double())
    assert y.dtype == x.grad.dtype == dtype
    assert ((y.double() - want).abs() <= tol * (1 + want.abs())).all()
    assert ((x.grad.double() - ref.grad).abs() <= 2 * tol * (1 + ref.grad.abs())).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelus_backward_is_torchs_product_bit_for_bit(kernel, dtype):
    """The backward's one pass (dy · saved derivative) rounds as torch's multiply does, across
    several threads' chunks and a tail no multiple of 16."""
    gen = torch.Generator().manual_seed(2)
    dy, d = (torch.randn(3 * 2 ** 14 + 7, generator=gen).to(dtype) for _ in range(2))
    got = kernel.gelu_backward(dy, d)
    assert got.dtype == dtype and torch.equal(got, dy * d)


def _masks() -> dict[int, str]:
    """Each thread of this process: the CPUs it may run on (Linux's Cpus_allowed_list)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        status = Path(f"/proc/self/task/{tid}/status").read_text()
        out[int(tid)] = next(line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list"))
    return out


def _free_again(before: dict[int, str]) -> bool:
    """Every thread may run where it could in `before` (one started since: where this thread could)."""
    mine = before[threading.get_native_id()]
    return all(m == before.get(tid, mine) for tid, m in _masks().items())


def test_set_team_affinity_places_each_of_torchs_threads(kernel):
    """Every thread of the team (the threads torch's CPU ops run on) gets the CPUs it is given, and
    the same call puts them back: here two threads on the first CPU, then anywhere again."""
    cpus = sorted(os.sched_getaffinity(0))
    before, threads = _masks(), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.ones(1 << 20).sum()  # start the team
        assert kernel.set_team_affinity([[cpus[0]]]) == 2
        pinned = [tid for tid, m in _masks().items() if m == str(cpus[0])]
        assert threading.get_native_id() in pinned and len(pinned) >= 2
        assert kernel.set_team_affinity([cpus]) == 2
        assert _free_again(before)
    finally:
        torch.set_num_threads(threads)


def test_training_pins_its_threads_while_it_runs_and_lets_them_go_after(kernel):
    """With one torch thread per CPU, a training run keeps this thread on one CPU while it steps;
    after the run every thread may run anywhere again. (On one CPU there is nothing to pin.)"""
    from minigpt.bench import _char_tokenizer, _synthetic_ids
    from minigpt.data import Splits
    from minigpt.train import Run, Step, TrainConfig, train
    cpus = sorted(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(len(cpus))
    try:
        before = _masks()
        ids = _synthetic_ids(5000, 40)
        run = Run.create(GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=32), _char_tokenizer(40),
                         Splits(train=ids, val=ids[:0]), dtype="float32")
        cfg = TrainConfig(max_iters=5, eval_interval=10, sample_every=0)
        during = {len(os.sched_getaffinity(0)) for ev in train(run, cfg) if isinstance(ev, Step)}
        assert during == {1 if len(cpus) > 1 else len(cpus)}
        assert (train_kernels.thread_pinner(run.model) is None) == (len(cpus) == 1)
        assert _free_again(before)
        run.model.set_training_kernels(False)  # "no compiled kernels": nothing pinned either
        assert train_kernels.thread_pinner(run.model) is None
    finally:
        torch.set_num_threads(threads)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(GPTConfig(**{**dict(vocab_size=40, block_size=20, n_layer=2, n_head=4, n_embd=32), **kw}))


def _loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_a_training_step_through_the_kernel_equals_the_eager_model(kernel):
    """The model's loss and every parameter's gradient are the same with the kernel as without it."""
    model = _model().train()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 40, (3, 20), generator=gen), torch.randint(0, 40, (3, 20), generator=gen)
    assert train_kernels.used_by(model)
    loss, grads = _loss_and_grads(model, x, y)
    model.set_training_kernels(False)
    assert not train_kernels.used_by(model)
    want_loss, want = _loss_and_grads(model, x, y)
    assert abs(loss - want_loss) < 1e-6
    for name, g in grads.items():
        assert torch.allclose(g, want[name], atol=1e-6), name


def test_the_kernel_is_used_only_where_it_computes_the_same(kernel, monkeypatch):
    """Training with no dropout on the CPU takes it (and the LayerNorm and GELU kernels); attention
    dropout, the explicit (teaching) path, evaluation without gradients, set_training_kernels(False)
    and a missing build keep the eager attention; other norms and activations stay torch's."""
    calls = []
    for name in ("attention", "layer_norm", "add_layer_norm", "gelu"):
        real = getattr(train_kernels, name)
        monkeypatch.setattr(train_kernels, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    x = torch.randint(0, 40, (2, 20))

    def uses(model, grad=True):
        calls.clear()
        with torch.set_grad_enabled(grad):
            model(x, x)
        return calls.count("attention") > 0

    assert uses(_model().train())
    assert {"attention", "layer_norm", "add_layer_norm", "gelu"} <= set(calls)  # each of the block's kernels
    assert uses(_model(norm="rms", activation="relu").train()) and set(calls) == {"attention"}
    assert not uses(_model().eval(), grad=False) and not calls
    off = _model().train()
    off.set_training_kernels(False)
    assert not uses(off) and not calls
    assert not uses(_model(dropout=0.1).train()) and not train_kernels.used_by(_model(dropout=0.1))
    assert uses(_model(dropout=0.1).eval())  # dropout is off in eval mode: with gradients it may
    assert not uses(_model().eval(), grad=False)
    explicit = _model().train()
    explicit.set_explicit_attention()
    assert not uses(explicit) and not train_kernels.used_by(explicit)
    monkeypatch.setenv("MINIGPT_KERNEL_DIR", "/nonexistent/minigpt-kernels")
    assert not uses(_model().train()) and not calls and not train_kernels.used_by(_model())


def test_training_with_the_kernel_learns_like_the_eager_model(kernel):
    """Twenty AdamW steps of the same model and batches with and without the kernel: the same losses
    to float rounding (the kernel changes no arithmetic that matters)."""
    gen = torch.Generator().manual_seed(2)
    text = torch.randint(0, 40, (60,), generator=gen).repeat(10)  # a phrase said again and again: learnable
    batches = [torch.stack([text[i:i + 21] for i in torch.randint(0, 500, (4,), generator=gen)]) for _ in range(20)]
    curves = []
    for on in (True, False):
        model = _model().train()
        model.set_training_kernels(on)
        opt = make_optimizer(model, TrainConfig(optimizer="adamw", lr=3e-3), "cpu")
        losses = []
        for b in batches:
            _, loss = model(b[:, :-1], b[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-1] < curves[0][0] - 0.3  # it learns
    assert max(abs(a - b) for a, b in zip(*curves)) < 1e-4


def test_muon_through_the_kernels_steps_as_through_torch(kernel, monkeypatch):
    """BatchedMuon's compiled stack and update (square, wide and tall matrices, weight decay) move the
    weights as torch's ops do, to bf16 Newton–Schulz's rounding (the compiled stack is normalised in
    fp32, torch's in bf16: the same tolerance as against torch's own Muon); the momentum is the same;
    each weight's version is bumped, as an in-place op's, so caches keyed on it see the step."""
    from minigpt.optim import POLAR_EXPRESS, BatchedMuon
    gen = torch.Generator().manual_seed(4)
    shapes = [(32, 32), (32, 128), (128, 32), (96, 32), (32, 96)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    calls = []
    for name in ("muon_stack", "muon_apply"):
        monkeypatch.setattr(kernel, name, lambda *a, real=getattr(kernel, name), name=name: calls.append(name) or real(*a),
                            raising=False)
    runs = []
    for use_kernel in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = BatchedMuon(params, lr=0.02, weight_decay=0.1, ns_schedule=POLAR_EXPRESS[:3], use_kernel=use_kernel)
        versions = [p._version for p in params]
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        assert all(p._version > v for p, v in zip(params, versions))
        runs.append((params, [opt.state[p]["momentum_buffer"] for p in params]))
    assert calls.count("muon_stack") == calls.count("muon_apply") == 3 * 3  # 3 shapes (tall ones transposed), 3 steps
    for (p, m), (q, n), p0 in zip(zip(*runs[0]), zip(*runs[1]), start):
        assert torch.equal(m, n)
        assert torch.allclose(p, q, atol=2e-3) and (p - p0).abs().max() > 0.02  # close, and the steps moved them


def test_muons_stack_rounds_as_torchs_bf16_ops_do(kernel):
    """The compiled stack is torch's: each update rounded to bf16, divided by its bf16 norm × 1.01
    (tall ones transposed), bit for bit; so an update that differs only in its last fp32 bits (micro-
    batches summed against the whole batch) gives the same stack, as here."""
    gen = torch.Generator().manual_seed(5)
    updates = [torch.randn(s, generator=gen) * 1e-3 for s in ((24, 80), (80, 24), (24, 80))]
    tall = [u.shape[0] > u.shape[1] for u in updates]
    got = kernel.muon_stack(updates, tall, 1.01, 1e-7)
    x = torch.stack([u.T if t else u for u, t in zip(updates, tall)]).bfloat16()
    want = x / (x.norm(dim=(1, 2), keepdim=True) * 1.01).clamp(min=1e-7)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    nudged = [u * (1 + 1e-7) for u in updates]  # the last bits of each update moved
    assert torch.equal(kernel.muon_stack(nudged, tall, 1.01, 1e-7), got)


def test_an_optimizer_made_after_the_kernels_are_turned_off_keeps_torchs_muon():
    model = _model()
    assert make_optimizer(model, TrainConfig(), "cpu").muon.use_kernel
    model.set_training_kernels(False)
    assert not make_optimizer(model, TrainConfig(), "cpu").muon.use_kernel
