"""Causal self-attention for training on a CPU through the compiled kernel (train_kernels.cpp).

`attention(qkv, n_head)` takes c_attn's output (B, T, 3C) and returns the heads' outputs (B, T, C),
the same as splitting q, k, v into heads and calling `F.scaled_dot_product_attention(q, k, v,
is_causal=True)`, forward and backward (fp32 arithmetic inside, in and out in qkv's dtype: bf16
under autocast). It replaces ~12 torch ops forward and ~20 backward a layer by one call each, and
skips the masked half of the scores; the model takes it while training on a CPU once the kernels
are built (`python -m minigpt kernel`), with no attention dropout.
"""

from __future__ import annotations

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


def kernel_for(qkv: torch.Tensor, dropout: float):
    """The compiled module when it should run this attention: training (gradients on), on a CPU, fp32
    or bf16, no dropout, built. Else None (inference keeps SDPA, which is fast without gradients)."""
    if (not torch.is_grad_enabled() or qkv.device.type != "cpu" or qkv.dtype not in (torch.float32, torch.bfloat16)
            or dropout > 0):
        return None
    return decode_kernel.load()


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
