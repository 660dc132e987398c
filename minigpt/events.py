"""The trainer's events: small dataclasses `train()` yields (Start, Step, Eval, Sample, Done).

The CLI prints them, the page draws them, tests collect them. Torch-free, so the views that fold
them (training_view, ladder_session) load without torch. Core module: imports nothing of minigpt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

STOP_REASONS = ("max_iters", "max_seconds", "target", "stopped", "diverged")


@dataclass
class Start:
    device: str
    dtype: str
    params: int
    train_tokens: int
    val_tokens: int
    max_iters: int
    max_seconds: float | None
    start_iter: int
    attention: str = "eager"  # "kernel" when training's attention runs through the compiled kernel


@dataclass
class Step:
    iter: int              # steps done in the whole run so far
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    elapsed: float         # seconds in this call of train()
    eta: float             # seconds left in this call (estimate)
    progress: float        # 0..1 of this call's budget


@dataclass
class Eval:
    iter: int
    train_loss: float | None  # None at a target run's extra checks, which estimate the validation loss only
    val_loss: float
    elapsed: float
    # Per block, first block first (empty for the bigram): see minigpt/diagnostics.py.
    layer_grad_norms: list = field(default_factory=list)    # gradient norm of the block's weights, this step
    layer_act_std: list = field(default_factory=list)       # std of the residual stream after the block
    layer_attn_entropy: list = field(default_factory=list)  # mean attention entropy, nats


@dataclass
class Sample:
    iter: int
    text: str


@dataclass
class Done:
    reason: str            # one of STOP_REASONS
    iters: int             # steps in the whole run
    seconds: float         # training seconds in the whole run
    tokens_per_s: float    # average over this call
    best_val_loss: float | None
    final_val_loss: float | None   # the full-validation protocol, when there is a validation split
    message: str = ""


def event_dict(event) -> dict:
    """JSON-ready form of an event, with its kind."""
    return {"event": type(event).__name__.lower(), **asdict(event)}
