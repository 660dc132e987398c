"""The compiled decoding step against the eager model: the same logits, the same cache, the same text."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from minigpt import decode_kernel
from minigpt.generate import generate
from minigpt.model import GPTConfig, build_model, new_kv_cache
from minigpt.sampling import SamplingConfig
from minigpt.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def kernel():
    return decode_kernel.load(build=True)  # ~30 s the first time on a machine, then cached


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=64)
    model = build_model(GPTConfig(**{**cfg, **kw})).eval()
    with torch.no_grad():  # gains and biases away from 1 and 0, so that a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith((".bias", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("switches", [
    {}, {"bias": True}, {"norm": "rms"}, {"norm": "none"}, {"residual": False}, {"mlp": False},
    {"pos_emb": False}, {"activation": "relu"}, {"activation": "sigmoid"}, {"activation": "tanh"},
    {"n_embd": 40, "n_head": 5, "n_layer": 3},  # head size 8, widths that are no multiple of 16
])
def test_kernel_steps_match_the_eager_model_to_the_end_of_the_context(kernel, switches):
    model = _model(**switches)
    eager, fast = new_kv_cache(model), new_kv_cache(model)
    step = decode_kernel.Decoder(kernel, model)
    with torch.no_grad():
        for t in range(model.config.block_size):  # every position, to a full cache
            tok = (t * 7 + 3) % model.config.vocab_size
            want = model(torch.tensor([[tok]]), kv_cache=eager)[0][0, -1]
            got = step.step(tok, fast)
            assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (t, (got - want).abs().max())
    assert fast.pos == eager.pos == model.config.block_size
    assert torch.allclose(fast.k, eager.k, atol=1e-5) and torch.allclose(fast.v, eager.v, atol=1e-5)


@pytest.mark.parametrize("switches", [{}, {"norm": "rms", "bias": True}, {"n_embd": 40, "n_head": 5, "n_layer": 3}])
def test_bf16_weights_give_the_fp32_model_with_rounded_weights(kernel, switches):
    """With bf16 weights the kernel widens each weight to fp32 as it reads it and computes in fp32;
    only the cache rounds its keys and values to bf16. So its logits are those of the fp32 model
    whose weights are the bf16 values (within 2e-3 here, next-token probabilities within 1e-4),
    and ten times closer to them than the eager bf16 model, which rounds every activation."""
    model = _model(**switches)
    bf16 = _model(**switches).to(torch.bfloat16)
    rounded = _model(**switches)
    rounded.load_state_dict({k: v.float() for k, v in bf16.state_dict().items()})
    step = decode_kernel.Decoder(kernel, bf16)
    fast, eager, ref = new_kv_cache(bf16), new_kv_cache(bf16), new_kv_cache(rounded)
    worst_kernel = worst_eager = 0.0
    with torch.no_grad():
        for t in range(model.config.block_size):
            tok = torch.tensor([[(t * 7 + 3) % model.config.vocab_size]])
            want = rounded(tok, kv_cache=ref)[0][0, -1]
            got = step.step(int(tok), fast)
            assert got.dtype == torch.float32
            assert (got.softmax(-1) - want.softmax(-1)).abs().max() < 1e-4, t
            worst_kernel = max(worst_kernel, (got - want).abs().max().item())
            worst_eager = max(worst_eager, (bf16(tok, kv_cache=eager)[0][0, -1].float() - want).abs().max().item())
    assert worst_kernel < 2e-3 and worst_kernel < worst_eager / 5, (worst_kernel, worst_eager)
    # The first layer's keys and values (no cache before them) are the reference's rounded once to bf16.
    assert fast.k.dtype == torch.bfloat16
    assert torch.allclose(fast.k[0].float(), ref.k[0], rtol=2 ** -8, atol=1e-6)
    assert torch.allclose(fast.v[0].float(), ref.v[0], rtol=2 ** -8, atol=1e-6)


def test_generation_through_the_kernel_gives_the_eager_text(kernel):
    model, tok = _model(), CharTokenizer([chr(97 + i) for i in range(50)])
    for sampling in (SamplingConfig("greedy"), SamplingConfig("temperature", 0.8)):
        runs = [[s.id for s in generate(model, tok, "abc", 40, sampling, seed=5, kernel=k)] for k in (True, False)]
        assert runs[0] == runs[1] and len(runs[0]) == 40  # 40 tokens from a 3-token prompt pass the context of 24


def test_the_kernel_sees_weights_changed_in_place(kernel):
    model = _model()
    step = decode_kernel.Decoder(kernel, model)  # made before the change, as a session's is
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(-2.0)  # what an optimizer step does
        eager, fast = new_kv_cache(model), new_kv_cache(model)
        want = model(torch.tensor([[4]]), kv_cache=eager)[0][0, -1]
        assert torch.allclose(step.step(4, fast), want, atol=2e-5, rtol=1e-4)


def test_out_of_range_is_refused_not_written(kernel):
    model = _model()
    cache, step = new_kv_cache(model), decode_kernel.Decoder(kernel, model)
    with pytest.raises(RuntimeError, match="vocabulary"):
        step.step(model.config.vocab_size, cache)
    cache.pos = model.config.block_size  # a full cache: the next position has no row
    with pytest.raises(RuntimeError, match="context"):
        step.step(1, cache)
    assert cache.pos == model.config.block_size and not cache.k.any()  # nothing written, nothing advanced


def test_a_plan_with_a_wrong_weight_is_refused(kernel):
    """The kernel trusts the sizes it is given; the plan checks them once, so a wrong list fails
    with a message instead of reading past a tensor's end."""
    model = _model()
    good = decode_kernel.Decoder(kernel, model)
    tensors = good.plan_tensors
    args = good.plan_args
    kernel.DecodePlan(tensors, *args)  # the list as the model gives it
    short = list(tensors)
    short[4] = torch.zeros(8, 64)  # c_attn's weight of layer 0, too small
    with pytest.raises(RuntimeError, match="elements"):
        kernel.DecodePlan(short, *args)
    with pytest.raises(RuntimeError, match="weights for"):
        kernel.DecodePlan(tensors[:-1], *args)


def test_models_the_kernel_cannot_run_stay_on_the_eager_path(kernel):
    model = _model()
    assert decode_kernel.decoder_for(model, new_kv_cache(model)) is not None
    assert decode_kernel.decoder_for(model, new_kv_cache(model, batch_size=2)) is None  # a Compare's rows
    assert decode_kernel.decoder_for(model, None) is None
    assert decode_kernel.decoder_for(_model(norm="batch"), new_kv_cache(_model(norm="batch"))) is None
    bf16 = _model().to(torch.bfloat16)
    assert decode_kernel.decoder_for(bf16, new_kv_cache(bf16)) is not None  # bf16 weights and cache: the kernel
    assert decode_kernel.decoder_for(bf16, new_kv_cache(model)) is None     # a cache of another dtype
    fp16 = _model().to(torch.float16)
    assert decode_kernel.decoder_for(fp16, new_kv_cache(fp16)) is None
    model.train()
    assert decode_kernel.decoder_for(model, new_kv_cache(model)) is None


def test_nothing_is_compiled_unless_asked(monkeypatch, tmp_path):
    """A page or a command never waits on a compiler: without a build in the cache folder, load()
    answers None at once, and generation runs on the eager model."""
    monkeypatch.setenv("MINIGPT_KERNEL_DIR", str(tmp_path))
    assert not decode_kernel.is_built() and decode_kernel.load() is None
    model = _model()
    assert decode_kernel.decoder_for(model, new_kv_cache(model)) is None
    assert not any(tmp_path.iterdir())


def test_a_built_kernel_loads_without_the_compiler_from_any_folder(kernel, tmp_path):
    """A build is imported as it is: no ninja run (~0.2 s of every process) and no rebuild when the
    build came from a checkout at another path (~45 s), as in a folder copied elsewhere."""
    shutil.copytree(decode_kernel._build_dir(), tmp_path / decode_kernel._name())
    code = ("import torch.utils.cpp_extension as ext\n"
            "def refuse(*a, **k): raise AssertionError('the compiler was run')\n"
            "ext.load = refuse\n"
            "from minigpt import decode_kernel\n"
            "print(decode_kernel.load().__name__ == decode_kernel._name())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MINIGPT_KERNEL_DIR": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_the_kernel_command_builds_and_checks(kernel, capsys):
    from minigpt.cli import main
    assert main(["kernel"]) == 0
    out = capsys.readouterr().out
    assert "kernels" in out and "decoding logits within" in out and "training kernels (attention, LayerNorm" in out


@pytest.fixture
def copies(monkeypatch):
    """Every model's weights read from copies (as a large model's are), wherever the OS has no huge pages too."""
    monkeypatch.setattr(decode_kernel, "COPY_MIN_BYTES", 0)
    monkeypatch.setattr(decode_kernel.hugepages, "available", lambda: True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_steps_from_copies_match_the_eager_model_and_follow_changes_in_place(kernel, copies, dtype):
    model = _model(norm="rms", bias=True).to(dtype)
    step = decode_kernel.Decoder(kernel, model)
    held = decode_kernel._held[model]
    assert all(c.data_ptr() != t.data_ptr() for c, t in zip(held.copies, step.plan_tensors) if t.numel())
    assert torch.equal(held.copies[4], model.transformer.h[0].attn.c_attn.weight)  # copied when made
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight.mul_(-2.0)  # after the plan was made, as an optimizer's step
        eager, fast = new_kv_cache(model), new_kv_cache(model)
        for t in range(6):
            want = model(torch.tensor([[t + 1]]), kv_cache=eager)[0][0, -1].float()
            tol = 2e-5 if dtype == torch.float32 else 2e-2  # the eager bf16 model rounds every activation
            assert torch.allclose(step.step(t + 1, fast), want, atol=tol, rtol=tol), t
    assert torch.equal(held.copies[-4], model.transformer.h[1].mlp.c_proj.weight)  # then ln_f's pair


def test_copies_are_kept_per_model_and_made_anew_for_a_replaced_parameter(kernel, copies):
    model = _model()
    decode_kernel.Decoder(kernel, model)
    first = decode_kernel._held[model]
    seen = first.seen.clone()
    decode_kernel.Decoder(kernel, model)  # a second generation: the same copies, nothing copied again
    assert decode_kernel._held[model] is first and torch.equal(first.seen, seen)
    with torch.no_grad():
        model.transformer.h[0].attn.c_proj.weight.data = torch.randn(64, 64)  # replaced, not changed in place
    step = decode_kernel.Decoder(kernel, model)
    assert decode_kernel._held[model] is not first
    eager, fast = new_kv_cache(model), new_kv_cache(model)
    with torch.no_grad():
        want = model(torch.tensor([[3]]), kv_cache=eager)[0][0, -1]
    assert torch.allclose(step.step(3, fast), want, atol=2e-5, rtol=1e-4)


def test_small_models_read_their_parameters_and_large_ones_copies(kernel, monkeypatch):
    monkeypatch.setattr(decode_kernel.hugepages, "available", lambda: True)
    small = _model()
    decode_kernel.Decoder(kernel, small)
    assert small not in decode_kernel._held  # 2 x 64 wide: well under COPY_MIN_BYTES
    large = _model(n_embd=256, n_head=4, n_layer=3)  # ~9.5 MB of fp32 weights
    decode_kernel.Decoder(kernel, large)
    assert large in decode_kernel._held
    monkeypatch.setattr(decode_kernel.hugepages, "available", lambda: False)
    other = _model(n_embd=256, n_head=4, n_layer=3)
    decode_kernel.Decoder(kernel, other)
    assert other not in decode_kernel._held  # no huge pages: nothing to gain from a copy


def test_a_plan_with_copies_checks_its_sources(kernel):
    good = decode_kernel.Decoder(kernel, _model())
    seen = torch.full((len(good.plan_tensors),), -1, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="one source and one version"):
        kernel.DecodePlan(good.plan_tensors, *good.plan_args, sources=good.plan_tensors[:-1], seen=seen)
    wrong = list(good.plan_tensors)
    wrong[4] = torch.zeros(8, 64)
    with pytest.raises(RuntimeError, match="shape"):
        kernel.DecodePlan(good.plan_tensors, *good.plan_args, sources=wrong, seen=seen)


@pytest.mark.parametrize("sampling", [SamplingConfig("greedy"), SamplingConfig("multinomial"),
                                      SamplingConfig("temperature", 0.8), SamplingConfig("temperature", 3.0),
                                      SamplingConfig("temperature", 0.05), SamplingConfig("greedy", top_k=3)])
def test_the_compiled_draw_is_sample_next_and_step_maker(kernel, sampling):
    """The same token from the same generator, the generator left in the same state, and StepMaker's
    probability and top-N exactly (of equal probabilities the smaller ids, where torch's topk picks
    any)."""
    from minigpt.generate import StepMaker, make_generator
    from minigpt.sampling import sample_next
    model, tok = _model(), CharTokenizer([chr(97 + i) for i in range(50)])
    draw = decode_kernel.Decoder(kernel, model).drawer(sampling, 10)
    ours, theirs = make_generator(7), make_generator(7)
    rows = 4 * torch.randn(300, 50, generator=torch.Generator().manual_seed(1))
    rows[0] = 0.0  # all equal: greedy takes the first
    for logits in rows:
        token, p, ids, probs = draw(logits, ours)
        want = int(sample_next(logits[None], sampling, theirs)[0])
        step = StepMaker(tok)(want, logits)
        assert (token, p, probs) == (want, step.prob, step.top_probs)
        if len(set(probs)) == len(probs):
            assert ids == step.top_ids
        else:  # torch's topk picks any of equal ones; the draw the smaller ids, in order
            full = logits.softmax(-1).tolist()
            assert [full[i] for i in ids] == probs and ids == sorted(ids, key=lambda i: (-full[i], i))
        assert isinstance(token, int) and all(isinstance(i, int) for i in ids)
    assert torch.equal(ours.get_state(), theirs.get_state())


def test_filters_are_left_to_sample_next(kernel):
    step = decode_kernel.Decoder(kernel, _model())
    assert step.drawer(SamplingConfig("temperature", 0.8, top_k=5), 10) is None
    assert step.drawer(SamplingConfig("multinomial", top_p=0.9), 10) is None
    assert step.drawer(SamplingConfig("temperature", 0.8, top_k=50, top_p=1.0), 10) is not None  # neither acts
    with pytest.raises(RuntimeError, match="one row"):
        kernel.draw(torch.zeros(2, 50), 1, 1.0, None, 10)
    nan = torch.zeros(50)
    nan[3] = float("nan")  # a diverged model: refused as torch.multinomial refuses it
    with pytest.raises(RuntimeError, match="nan"):
        kernel.draw(nan, 1, 1.0, None, 10)
    assert kernel.draw(nan, 0, 1.0, None, 2)[0] == 3  # greedy takes the NaN, as argmax does


def test_generated_steps_through_the_kernel_match_the_eager_ones(kernel):
    """Text, probabilities and top-N of every step, through the kernel (its draw included) and the eager model."""
    model, tok = _model(), CharTokenizer([chr(97 + i) for i in range(50)])
    for sampling in (SamplingConfig("multinomial"), SamplingConfig("temperature", 1.5, top_k=8)):
        fast, eager = [list(generate(model, tok, "abc", 30, sampling, seed=2, kernel=k)) for k in (True, False)]
        assert [s.id for s in fast] == [s.id for s in eager]
        assert [s.top_ids for s in fast] == [s.top_ids for s in eager]
        assert all(abs(a.prob - b.prob) < 1e-5 for a, b in zip(fast, eager))
