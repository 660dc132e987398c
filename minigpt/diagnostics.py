"""Per-block diagnostics the trainer reports at every evaluation: how the network trains inside.

- `block_grad_norms`: the gradient norm of each block's weights, read right after a backward pass
  (the vanishing-gradient picture of the Concepts tab, in the real network);
- `block_forward_stats`: on one fixed batch, in eval mode, the standard deviation of the residual
  stream after each block and the mean attention entropy of each block (nats; rows with 2+ keys).

The bigram baseline has no blocks: every list is empty.
"""

from __future__ import annotations

import torch

from .model import GPT


def _blocks(model) -> list:
    return list(model.transformer.h) if isinstance(model, GPT) else []


@torch.no_grad()
def block_grad_norms(model) -> list[float]:
    """The L2 norm of the gradients of each block's parameters (first block first), before clipping."""
    norms = []
    for block in _blocks(model):
        # float64: the squares of a vanished gradient (~1e-22) underflow float32 to exactly 0
        grads = [p.grad.detach().double().norm() for p in block.parameters() if p.grad is not None]
        norms.append(torch.stack(grads).norm() if grads else torch.zeros((), dtype=torch.float64))
    return [float(n) for n in torch.stack(norms).cpu()] if norms else []


@torch.no_grad()
def block_forward_stats(model, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """(std of the residual stream after each block, mean attention entropy of each block) on `x`.

    One forward pass in eval mode through the explicit attention path (which returns the weights;
    the fused path never materialises them), fp32; the model's mode is restored afterwards.
    """
    blocks = _blocks(model)
    if not blocks:
        return [], []
    stds = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: stds.append(out[0].float().std())) for b in blocks]
    was_training = model.training
    model.eval()
    try:
        _, _, atts = model(x, return_attn=True)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    entropies = []
    for att in atts:  # (B, nh, T, T)
        p = att.float()[:, :, 1:]  # the first row has one key: its entropy is always 0
        entropies.append(-(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean() if p.numel() else torch.zeros(()))
    return [float(s) for s in torch.stack(stds).cpu()], [float(e) for e in torch.stack(entropies).cpu()]
