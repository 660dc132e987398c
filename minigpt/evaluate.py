"""Loss measurement: the full-validation protocol (used by `eval` and the benchmarks) and cheap estimates."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import TRAIN_FRACTION


def val_split(ids: torch.Tensor) -> torch.Tensor:
    """The validation ids of the protocol: everything from int(0.9 * len) on."""
    return ids[int(TRAIN_FRACTION * len(ids)):]


@torch.no_grad()
def full_val_loss(model, val: torch.Tensor, block_size: int | None = None, batch_windows: int = 32) -> float:
    """Mean cross-entropy over every prediction of the non-overlapping windows covering `val`.

    n = (len(val) - 1) // T windows; inputs val[:n*T], targets val[1:n*T+1], in eval mode, fp32.
    """
    # 32 windows a forward keep the activations in the caches: Tiny Shakespeare's 1,742 windows of 64
    # in 1.4-1.7 s against 2.2-2.4 s with 256 (the default model on the 2-core build machine).
    block_size = block_size or model.config.block_size
    n = (len(val) - 1) // block_size
    if n < 1:
        raise ValueError(f"the validation text has {len(val)} tokens, fewer than one context "
                         f"window of {block_size} + 1")
    device = next(model.parameters()).device
    x = val[: n * block_size].view(n, block_size)
    y = val[1: n * block_size + 1].view(n, block_size)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for i in range(0, n, batch_windows):
            xb, yb = x[i:i + batch_windows].to(device), y[i:i + batch_windows].to(device)
            logits = model(xb)[0]
            total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), yb.reshape(-1),
                                     reduction="sum").item()
    finally:
        model.train(was_training)
    return total / (n * block_size)


@torch.no_grad()
def estimate_loss(model, batches: list[tuple[torch.Tensor, torch.Tensor]], precision=None) -> float:
    """Mean loss over fixed (x, y) batches, in eval mode: a cheap, comparable-over-time estimate."""
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros(())
        for x, y in batches:
            if precision is not None:
                with precision.autocast():
                    loss = model(x, y)[1]
            else:
                loss = model(x, y)[1]
            total += loss.float().cpu()
    finally:
        model.train(was_training)
    return float(total) / len(batches)
