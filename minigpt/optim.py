"""Optimizers: AdamW alone, or Muon for the 2-D weights inside the blocks and AdamW for the rest.

Muon (Keller Jordan's, `torch.optim.Muon`) replaces each weight matrix's momentum by its nearest
orthogonal matrix (a few Newton–Schulz iterations in bf16), so every direction of the update moves
by about the same amount. It learns far more per step than AdamW on a small GPT; it only takes
matrices, so embeddings, the tied head and the LayerNorm gains stay with AdamW. One learning-rate
schedule drives both: each parameter group has its own peak (`peak_lr`) and follows the same curve.

`BatchedMuon` is torch's Muon with two changes, for speed on a CPU: the matrices of the same shape
(one per block) are orthogonalised together in a batched matmul instead of one at a time, and it
can take the Polar Express schedule (below) instead of the same quintic five times. Its state
(`momentum_buffer` per matrix) and, with torch's coefficients, its arithmetic are torch's.

Optimizer state is saved in checkpoints as `optimizer.{index}.{key}` tensors; `state_layout` says
what a complete state holds for a model, so the loader can refuse an incomplete or misfit one.
"""

from __future__ import annotations

import inspect
import sys

import torch

from .config import OPTIMIZERS  # noqa: F401  (the names; defined torch-free there)
from .device import cpu_bf16_pays
from .model import decay_split

TYPE_NAMES = {"adamw": "AdamW", "muon": "MuonAdamW"}  # the `type` stored in a checkpoint's metadata
ADAMW_KEYS = ("step", "exp_avg", "exp_avg_sq")
MUON_KEYS = ("momentum_buffer",)


def muon_split(model) -> tuple[list, list, list]:
    """(matrices inside the blocks → Muon, other matrices and embeddings → AdamW with decay, gains → AdamW)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = [p for n, p in named if p.dim() == 2 and ".h." in n]
    ids = {id(p) for p in muon}
    decay, no_decay = decay_split(model)
    return muon, [p for p in decay if id(p) not in ids], [p for p in no_decay if id(p) not in ids]


# Polar Express (Amsel, Persson, Musco & Gower, 2025, arXiv:2505.16932): each Newton–Schulz
# iteration p(x) = a·x + b·x³ + c·x⁵ gets its own coefficients, the best odd quintic for the range the
# singular values can be in by then, so the small ones are lifted in fewer iterations. The paper's
# first iterations, with its 1.01 safety factor (a/1.01, b/1.01³, c/1.01⁵) for bf16 rounding.
POLAR_EXPRESS = tuple((a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
))
# The default: 3 of them. They leave the singular values anywhere in ~0.2-1.9 (5 of them: 0.87-1.12;
# torch's quintic 5 times: 0.68-1.13), yet on the default recipe they learned as much per step, and
# each iteration is ~1.75 ms of a ~55-ms step. Full-val, 250 steps, seeds 1337 / 7: 3 Polar Express
# iterations 1.932 / 1.941, 5 of them 1.933 / 1.921, torch's quintic 5 times 1.951 / 1.942, 4 times
# 1.967 / 1.975, 3 times 2.053 / 2.052; 1750 steps: 1.518 (3), 1.522 (5), 1.519 (torch's); the
# shipped model's command (README): 1.505, 1.505 (4), 1.503 (torch's).
POLAR_EXPRESS_STEPS = 3


def _ns_batched(g: torch.Tensor, schedule, eps: float, dtype, norm_scale: float = 1.0) -> torch.Tensor:
    """Newton–Schulz orthogonalisation of a stack of equal matrices (k, m, n) with m <= n: one
    iteration per (a, b, c) of `schedule`, after scaling each matrix to Frobenius norm 1/norm_scale."""
    x = g.to(dtype)
    x = x / (x.norm(dim=(1, 2), keepdim=True) * norm_scale).clamp(min=eps)  # spectral norm <= 1
    return _ns_iterate(x, schedule)


def _ns_iterate(x: torch.Tensor, schedule) -> torch.Tensor:
    """The Newton–Schulz iterations of `_ns_batched` on an already normalised stack."""
    for a, b, c in schedule:
        gram = torch.bmm(x, x.transpose(1, 2))                 # (k, m, m)
        upd = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, upd, x, beta=a)
    return x


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon, with the matrices of one shape orthogonalised in one batched call.

    `ns_schedule`, a sequence of (a, b, c), replaces torch's `ns_coefficients` × `ns_steps` by one
    iteration per triple (and the Polar Express paper's 1.01 norm safety); None keeps torch's. On a
    CPU with the kernels built, each stack is made (with the same bf16 roundings) and the update
    applied (weight decay included) by one compiled call each instead of ~10 torch ops; the
    Newton–Schulz products stay torch's batched matmuls.
    """

    def __init__(self, params, ns_dtype=torch.bfloat16, ns_schedule=None, use_kernel: bool = True, **kwargs):
        if ns_schedule is not None:
            kwargs["ns_steps"] = len(ns_schedule)  # what the param groups report
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype
        self.ns_schedule = tuple(ns_schedule) if ns_schedule is not None else None
        self.use_kernel = use_kernel  # on a CPU, the stack and update through the compiled kernels once built

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            if not params:
                continue
            lr, wd, mom = float(group["lr"]), group["weight_decay"], group["momentum"]
            torch._foreach_lerp_(bufs, grads, 1 - mom)
            updates = torch._foreach_lerp(grads, bufs, mom) if group["nesterov"] else bufs
            # A tall matrix is orthogonalised as its transpose, so (512, 128) and (128, 512) share a stack.
            by_shape: dict[tuple, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault((min(p.shape), max(p.shape)), []).append(i)
            torch_ns = self.ns_schedule is None
            schedule = (group["ns_coefficients"],) * group["ns_steps"] if torch_ns else self.ns_schedule
            norm_scale, decay = 1.0 if torch_ns else 1.01, 1 - lr * wd
            kernel = self._kernel(params, updates)
            if wd and kernel is None:
                torch._foreach_mul_(params, decay)
            for idx in by_shape.values():
                tall = [params[i].shape[0] > params[i].shape[1] for i in idx]
                # torch's "original" lr adjustment: sqrt(rows / cols) for a tall matrix
                scales = [-lr * max(1.0, params[i].shape[0] / params[i].shape[1]) ** 0.5 for i in idx]
                if kernel is not None:  # the stack and the update in one compiled pass each, decay included
                    stack = kernel.muon_stack([updates[i] for i in idx], tall, norm_scale, group["eps"])
                    ortho = _ns_iterate(stack.to(self.ns_dtype), schedule).to(torch.bfloat16)
                    kernel.muon_apply([params[i] for i in idx], ortho, tall, scales, decay)
                    continue
                stack = torch.stack([updates[i].T if t else updates[i] for i, t in zip(idx, tall)])
                ortho = _ns_batched(stack, schedule, group["eps"], self.ns_dtype, norm_scale=norm_scale)
                ortho = [o.T if t else o for o, t in zip(ortho.to(params[idx[0]].dtype).unbind(0), tall)]
                torch._foreach_add_([params[i] for i in idx], torch._foreach_mul(ortho, scales))
        return loss

    def _kernel(self, params, updates):
        """The compiled module when it can do this group's stack and update (fp32 contiguous matrices
        on a CPU, built and allowed), else None: torch's ops do them. Its stack and update are in bf16;
        with fp32 Newton–Schulz the iterations start from that bf16 stack and run in fp32."""
        if not self.use_kernel or self.ns_dtype not in (torch.bfloat16, torch.float32):
            return None
        if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in [*params, *updates]):
            return None
        from .decode_kernel import load
        return load()


class MuonAdamW:
    """Muon on the blocks' matrices and AdamW on the rest, stepped together as one optimizer.

    `param_groups` lists AdamW's groups then Muon's, each tagged with `kind`; the state dict numbers
    the parameters in that order (AdamW's first), like a single torch optimizer's would.
    """

    def __init__(self, adamw: torch.optim.Optimizer, muon: torch.optim.Optimizer):
        self.adamw, self.muon = adamw, muon

    @property
    def param_groups(self) -> list:
        return self.adamw.param_groups + self.muon.param_groups

    def _n_adamw(self) -> int:
        return sum(len(g["params"]) for g in self.adamw.param_groups)

    def step(self, closure=None):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True):
        self.adamw.zero_grad(set_to_none)
        self.muon.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        a, m = self.adamw.state_dict(), self.muon.state_dict()
        n = self._n_adamw()
        state = dict(a["state"])
        state.update({i + n: s for i, s in m["state"].items()})
        groups = a["param_groups"] + [dict(g, params=[i + n for i in g["params"]]) for g in m["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        n = self._n_adamw()
        a_state = {i: s for i, s in state_dict["state"].items() if i < n}
        m_state = {i - n: s for i, s in state_dict["state"].items() if i >= n}
        self.adamw.load_state_dict({"state": a_state, "param_groups": self.adamw.state_dict()["param_groups"]})
        self.muon.load_state_dict({"state": m_state, "param_groups": self.muon.state_dict()["param_groups"]})


# torch.optim.Optimizer's methods that torch wraps in torch._disable_dynamo (torch/_compile.py).
DYNAMO_DISABLED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def skip_dynamo_import() -> bool:
    """Spare a process the import of torch._dynamo that its first optimizer costs (~2 s on the 2-core
    build machines, more than torch itself, in a target run of ~30 s); with `AdamW` below.

    Why it is imported: torch wraps these Optimizer methods in `torch._disable_dynamo`, which on its
    first call imports dynamo only to mark the method as never to be compiled, and caches the marked
    method on the function (`__dynamo_disable`). minigpt never compiles (eager training, its own C++
    kernels), so where dynamo is not loaded yet each method is cached as itself: the call is the
    same. A program that compiles after this still gets dynamo; these methods are then traceable.
    Returns whether every method was found as torch wraps it (else nothing is changed for it)."""
    if "torch._dynamo" in sys.modules:
        return False
    found = True
    for name in DYNAMO_DISABLED:
        inner = getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
        if inner is None:
            found = False
        elif getattr(inner, "__dynamo_disable", None) is None:
            setattr(inner, "__dynamo_disable", inner)
    return found


_ADAM_STEP = inspect.unwrap(torch.optim.Adam.step)  # torch's step itself, inside its wrappers


class AdamW(torch.optim.AdamW):
    """torch's AdamW, stepped without the wrapper of `Adam.step` that imports torch._dynamo at every
    call (for a graph break under torch.compile) and turns gradients off: here `no_grad` does that."""

    @torch.no_grad()
    def step(self, closure=None):
        return _ADAM_STEP(self, closure)


def optimizer_kind(optimizer) -> str:
    return "muon" if isinstance(optimizer, MuonAdamW) else "adamw"


def ns_dtype_for(device: str) -> torch.dtype:
    """Newton–Schulz's dtype: bf16 on a GPU, and on a CPU where bf16 matmuls pay (device.cpu_bf16_pays);
    else fp32 (on a CPU with slow bf16, a step's iterations: ~9.7 ms in fp32 against ~11.8 in bf16
    for the default model, 2-core Xeon)."""
    if device.split(":")[0] == "cpu" and not cpu_bf16_pays():
        return torch.float32
    return torch.bfloat16


def make_optimizer(model, cfg, device: str):
    """The optimizer `cfg.optimizer` names, for `model`; each group carries its kind and peak lr."""
    skip_dynamo_import()
    extra = {"fused": True} if device.split(":")[0] in ("cpu", "cuda") else {}
    kind = getattr(cfg, "optimizer", "adamw")
    if kind == "adamw":
        decay, no_decay = decay_split(model)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), **extra)
        for g in opt.param_groups:
            g.update(kind="adamw", peak_lr=cfg.lr)
        return opt
    if kind != "muon":
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    hidden, decay, no_decay = muon_split(model)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, cfg.beta2), **extra)
    if not hidden:  # the bigram model has no blocks: AdamW does everything
        for g in adamw.param_groups:
            g.update(kind="adamw", peak_lr=cfg.lr)
        return adamw
    # The same decoupled decay as AdamW's matrices (torch's Muon multiplies by 1 - lr·wd each step): the
    # default recipe sees Tiny Shakespeare ~3.5 times and overfits; 0.1 took the shipped model's full-val
    # from 1.527 to 1.514 in the same 1750 steps (0.25: 1.523).
    muon = BatchedMuon(hidden, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                       ns_dtype=ns_dtype_for(device), ns_schedule=POLAR_EXPRESS[:POLAR_EXPRESS_STEPS],
                       use_kernel=getattr(model, "training_kernels", True))
    for g in adamw.param_groups:
        g.update(kind="adamw", peak_lr=cfg.lr)
    for g in muon.param_groups:
        g.update(kind="muon", peak_lr=cfg.muon_lr)
    return MuonAdamW(adamw, muon)


def state_layout(model, type_name: str) -> list[tuple[list[int], tuple[str, ...]]]:
    """For each parameter index of a complete saved state: (its shape, the keys it must hold)."""
    if type_name == "AdamW":
        decay, no_decay = decay_split(model)
        return [(list(p.shape), ADAMW_KEYS) for p in decay + no_decay]
    if type_name == "MuonAdamW":
        hidden, decay, no_decay = muon_split(model)
        return ([(list(p.shape), ADAMW_KEYS) for p in decay + no_decay]
                + [(list(p.shape), MUON_KEYS) for p in hidden])
    raise ValueError(f"unknown optimizer type {type_name!r}")


def restore_optimizer(model, cfg, device: str, saved: dict | None):
    """(optimizer for `cfg`, note): the saved state restored when it is for the same optimizer and
    model, else a fresh optimizer and a one-line note saying why. `saved` is a checkpoint's
    validated `optimizer_state` (with its `type`), or None."""
    opt = make_optimizer(model, cfg, device)
    if not saved or not saved.get("state"):
        return opt, ""
    want = TYPE_NAMES["muon"] if isinstance(opt, MuonAdamW) else "AdamW"
    have = saved.get("type", "AdamW")
    if have != want:
        return opt, (f"note: the checkpoint holds {have} state but this run uses {want}: "
                     f"starting a fresh optimizer")
    try:
        opt.load_state_dict({"state": saved["state"], "param_groups": opt.state_dict()["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        return make_optimizer(model, cfg, device), f"note: the saved optimizer state does not fit ({e}): starting a fresh optimizer"
    return opt, ""
