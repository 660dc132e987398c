"""Causal self-attention, LayerNorm and GELU for training on a CPU through the compiled kernels
(train_kernels.cpp).

`attention(qkv, n_head)` takes c_attn's output (B, T, 3C) and returns the heads' outputs (B, T, C),
the same as splitting q, k, v into heads and calling `F.scaled_dot_product_attention(q, k, v,
is_causal=True)`, forward and backward (fp32 arithmetic inside, in and out in qkv's dtype: bf16
under autocast). It replaces ~12 torch ops forward and ~20 backward a layer by one call each, and
skips the masked half of the scores; the model takes it while training on a CPU once the kernels
are built (`python -m minigpt kernel`), with no attention dropout.

`layer_norm(x, weight, bias, eps, module)` is nn.LayerNorm's forward and backward for an fp32 x, its
output in bf16 under autocast, which is what the next Linear takes (ATen's writes fp32, then autocast
copies it to bf16, and back again for the gradient); `add_layer_norm(x, a, ...)` is the residual add
before it and the norm in one pass (the block's `x = x + attn(...)`, then `ln_2(x)`).
`gelu(u, module)` is F.gelu, its derivative computed with it (one erf, whose exp gives the derivative
too) and kept, so the backward is one pass of products (dy · derivative) instead of erf and exp
again. (Muon's stack and update, in the same C++ file, are called by minigpt/optim.py's BatchedMuon.)
"""

from __future__ import annotations

import os

import torch

from . import decode_kernel


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, n_head, module):
        y, probs = module.attention_forward(qkv, n_head)
        ctx.save_for_backward(qkv, y, probs)
        ctx.n_head, ctx.module = n_head, module
        return y

    @staticmethod
    def backward(ctx, dy):
        qkv, y, probs = ctx.saved_tensors
        return ctx.module.attention_backward(qkv, y, probs, dy, ctx.n_head), None, None  # (it makes dy contiguous)


def reference_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """What `attention` computes, through torch: the heads of qkv into F.scaled_dot_product_attention."""
    B, T, C3 = qkv.shape
    q, k, v = (t.view(B, T, n_head, C3 // 3 // n_head).transpose(1, 2) for t in qkv.split(C3 // 3, dim=2))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C3 // 3)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, bf16_out, module):
        y, mean, rstd, _ = module.layer_norm_forward(x, weight, _or_none(bias), eps, bf16_out, _NONE)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.module, ctx.has_bias = module, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db, _ = ctx.module.layer_norm_backward(x, weight, mean, rstd, dy.contiguous(), _NONE, False)
        return dx, dw, db if ctx.has_bias else None, None, None, None


class _AddLayerNorm(torch.autograd.Function):
    """(s, norm(s)) for s = x + a: the residual add and the LayerNorm after it in one pass each way."""

    @staticmethod
    def forward(ctx, x, a, weight, bias, eps, bf16_out, module):
        y, mean, rstd, s = module.layer_norm_forward(x, weight, _or_none(bias), eps, bf16_out, a)
        ctx.save_for_backward(s, weight, mean, rstd)
        ctx.module, ctx.has_bias, ctx.a_dtype = module, bias is not None, a.dtype
        return s, y

    @staticmethod
    def backward(ctx, ds, dy):
        s, weight, mean, rstd = ctx.saved_tensors
        dy = dy.contiguous() if dy is not None else torch.zeros_like(s)
        bf16 = ctx.a_dtype == torch.bfloat16
        dx, dw, db, dx16 = ctx.module.layer_norm_backward(s, weight, mean, rstd, dy, _or_none(ds), bf16)
        # x and a both get ds + the norm's gradient: a in its own dtype (bf16 under autocast)
        return dx, dx16 if bf16 else dx.clone(), dw, db if ctx.has_bias else None, None, None, None


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, module):
        y, slope = module.gelu_forward(u)
        ctx.save_for_backward(slope)
        ctx.module = module
        return y

    @staticmethod
    def backward(ctx, dy):
        (slope,) = ctx.saved_tensors
        return ctx.module.gelu_backward(dy.contiguous(), slope), None  # dy · slope, in y's dtype


_NONE = torch.empty(0)  # "none" to the kernel (no bias, no residual)


def _or_none(t: torch.Tensor | None) -> torch.Tensor:
    return _NONE if t is None else t.contiguous()


def _training_on_cpu(x: torch.Tensor, dtypes: tuple) -> bool:
    return torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype in dtypes


def _bf16_autocast() -> bool:
    """True under CPU bf16 autocast: the norm then writes what the next Linear would cast to."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def kernel_for(qkv: torch.Tensor, dropout: float):
    """The compiled module when it should run this attention: training (gradients on), on a CPU, fp32
    or bf16, no dropout, built. Else None (inference keeps SDPA, which is fast without gradients)."""
    return decode_kernel.load() if dropout == 0 and _training_on_cpu(qkv, (torch.float32, torch.bfloat16)) else None


def norm_kernel_for(x: torch.Tensor, weight: torch.Tensor | None):
    """The compiled module when it should run this LayerNorm: training on a CPU, fp32 input and gain
    (the residual stream's dtype, under autocast too), built. Else None."""
    if weight is None or weight.dtype != torch.float32 or not _training_on_cpu(x, (torch.float32,)):
        return None
    return decode_kernel.load()


def gelu_kernel_for(u: torch.Tensor):
    """The compiled module when it should run this GELU: training on a CPU, fp32 or bf16, built. Else None."""
    return decode_kernel.load() if _training_on_cpu(u, (torch.float32, torch.bfloat16)) else None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, module) -> torch.Tensor:
    """nn.LayerNorm over x's last dim through the compiled `module`: in bf16 under CPU bf16 autocast
    (what the Linear after it would cast it to), else in x's dtype (fp32)."""
    flat = x.reshape(-1, x.size(-1)).contiguous()
    return _LayerNorm.apply(flat, weight, bias, eps, _bf16_autocast(), module).view(x.shape)


def add_layer_norm(x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
                   module) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + a, nn.LayerNorm of it) through the compiled `module`, for the fp32 residual stream x and a
    sublayer's output a (fp32, or bf16 under autocast): x + a is fp32 as torch's promotion makes it,
    the norm as `layer_norm` gives it. One pass instead of the add, the norm, and their backward's
    cast and sum."""
    C = x.size(-1)
    s, y = _AddLayerNorm.apply(x.reshape(-1, C).contiguous(), a.reshape(-1, C).contiguous(), weight, bias, eps,
                               _bf16_autocast(), module)
    return s.view(x.shape), y.view(x.shape)


def gelu(u: torch.Tensor, module) -> torch.Tensor:
    """F.gelu(u) (exact, erf) through the compiled `module`, in u's dtype."""
    return _Gelu.apply(u.contiguous(), module)


def thread_pinner(model):
    """A function `pin(on)` that puts each of torch's CPU threads (the calling thread's team) on a CPU
    of its own (on=True) or lets them all run anywhere again (False), or None where that is not safe
    or possible: not Linux, the kernels not built or not allowed for `model`
    (GPT.set_training_kernels), or not exactly one torch thread per CPU this thread may use (with
    fewer threads than CPUs two could share one core's SMT siblings).

    Why: on the 2-core build machine the scheduler moves the training threads between cores; pinned,
    a step ran 2-3% faster (one process, pinned and free rounds alternating: a median of 1.02-1.03
    over 11 rounds).
    """
    module = decode_kernel.load()
    if module is None or not hasattr(os, "sched_getaffinity") or not getattr(model, "training_kernels", True):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or torch.get_num_threads() != len(cpus):
        return None

    def pin(on: bool) -> None:
        module.set_team_affinity([[c] for c in cpus] if on else [cpus])
    return pin


def used_by(model) -> bool:
    """True when training `model` will run its attention through the kernel: a GPT on the CPU, fp32
    weights, no attention dropout, the kernels allowed (GPT.set_training_kernels) and built."""
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if not blocks:
        return False
    p = model.transformer.wte.weight
    if p.device.type != "cpu" or p.dtype != torch.float32:
        return False
    if not all(b.attn.use_kernel and not b.attn.explicit and b.attn.dropout == 0 for b in blocks):
        return False
    return decode_kernel.load() is not None


def attention(qkv: torch.Tensor, n_head: int, module) -> torch.Tensor:
    """y (B, T, C) = causal softmax(q kᵀ / √hs) v for every head of qkv (B, T, 3C), through the
    compiled `module` (`kernel_for` gives it)."""
    return _Attention.apply(qkv.contiguous(), n_head, module)
