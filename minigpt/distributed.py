"""Several processes, one model: PyTorch's torchrun + DistributedDataParallel, nothing home-made.

    torchrun --standalone --nproc_per_node=2 -m minigpt train --device cpu --max-iters 200

torchrun starts one process per GPU (or CPU worker) and sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address in each one's environment. `process_group()` reads them, joins the group (nccl on
CUDA, gloo on CPU) and returns a `Team`: this process's place in the group, plus the few collective
helpers the trainer needs. Without torchrun (or with one process) it returns None and nothing
changes. Importing this module starts nothing.

How the trainer uses it (minigpt/train.py): `run.model` stays the plain module; a DDP wrapper is used
only for the forward/backward, so checkpoints have the usual names (no `module.` prefix). Every rank
draws its own batches (rank-offset seeds) and DDP averages the gradients, so one step sees
`batch_size` sequences in all; rank 0 alone evaluates, samples, logs and saves; every stop decision
(time budget, target loss, Ctrl-C, divergence) is agreed through an all_reduce, so all ranks leave
the loop on the same step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .train import STOP_REASONS


@dataclass
class Team:
    """This process's place in a torchrun job, and the collectives the trainer needs."""
    rank: int           # 0 .. world_size-1 over all nodes
    world_size: int     # processes in the job
    local_rank: int     # index on this node: which GPU this process drives
    device: str         # "cuda:<local_rank>" or "cpu"
    stop: threading.Event = field(default_factory=threading.Event)  # set by SIGINT/SIGTERM
    _clock: tuple[float, bool] | None = field(default=None, repr=False)  # the last agree_clock result

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def agree(self, reason: str | None) -> str | None:
        """The stop reason every rank will act on: any rank's wish (the most severe if they differ).

        A collective: every rank must call it at the same point of the loop."""
        # Reasons travel as codes (0 = carry on); the later in STOP_REASONS wins a MAX.
        flag = torch.tensor([STOP_REASONS.index(reason) + 1 if reason else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        code = int(flag.item())
        return STOP_REASONS[code - 1] if code else None

    def agree_clock(self, step: int, elapsed: float, stop_requested: bool, every: int = 1) -> tuple[float, bool]:
        """(rank 0's elapsed seconds, whether any rank was asked to stop), agreed every `every` steps.

        Between agreements the last agreed values stand, so all ranks follow one clock: the same
        learning rate (a time-based schedule) and the same step for a time budget or a stop request."""
        if step % every == 0 or self._clock is None:
            both = torch.tensor([elapsed if self.is_main else 0.0, float(stop_requested)],
                                dtype=torch.float64, device=self.device)
            dist.all_reduce(both, op=dist.ReduceOp.MAX)
            clock, stopping = both.tolist()
            self._clock = (clock, stopping > 0)
        return self._clock

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """A DDP view of `model` for the forward/backward; `model` itself stays the one to save."""
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.local_rank] if self.device.startswith("cuda") else None
        # No buffers change during training, so there is nothing to broadcast before each forward.
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def env_ranks() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's environment, or None outside a multi-process job."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return (rank, world, local) if world > 1 else None


def team_device(requested: str, local_rank: int) -> str:
    """cuda:<local_rank> when CUDA is asked for (or auto and present), else cpu; mps cannot join a group."""
    base = (requested or os.environ.get("MINIGPT_DEVICE") or "auto").strip().lower().split(":")[0]
    if base == "auto":
        base = "cuda" if torch.cuda.is_available() else "cpu"
    if base == "cpu":
        return "cpu"
    if base != "cuda":
        raise ValueError(f"multi-process training runs on cuda or cpu, not {base!r}; pass --device cpu")
    if not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but PyTorch sees no CUDA GPU")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                         f"use --nproc_per_node={torch.cuda.device_count()} or fewer")
    return f"cuda:{local_rank}"


def setup(device: str = "auto") -> Team | None:
    """Join the torchrun job this process belongs to (None when there is none); see process_group."""
    ranks = env_ranks()
    if ranks is None:
        return None
    rank, world, local = ranks
    device = team_device(device, local)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device == "cpu":
        agree_on_bf16(rank)
    return Team(rank=rank, world_size=world, local_rank=local, device=device)


def agree_on_bf16(rank: int) -> None:
    """Every rank takes rank 0's verdict on CPU bf16 (device.cpu_bf16_pays: the autocast dtype and
    Muon's Newton–Schulz dtype), so the replicas compute alike. Measured by each rank, a verdict
    could differ from one rank to the next while they start together; the replicas would drift."""
    from . import device as dev
    verdict = torch.tensor([float(dev.cpu_bf16_pays()) if rank == 0 else 0.0])
    dist.broadcast(verdict, src=0)
    os.environ[dev.BF16_ENV] = "1" if verdict.item() else "0"
    dev.cpu_bf16_pays.cache_clear()  # the next call reads the verdict given


def teardown(team: Team | None, wait: bool = True) -> None:
    """Leave the group; with `wait`, first let every rank finish (rank 0 may still be saving)."""
    if team is None or not dist.is_initialized():
        return
    try:
        if wait:
            dist.barrier(device_ids=[team.local_rank] if team.device.startswith("cuda") else None)
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto"):
    """`with process_group(args.device) as team:` a Team under torchrun, else None.

    Inside, SIGINT and SIGTERM set `team.stop` instead of interrupting: the ranks agree on it at the
    next step, so they stop together and rank 0 saves (torchrun forwards Ctrl-C to every worker)."""
    team = setup(device)
    if team is None:
        yield None
        return
    old = {s: signal.signal(s, lambda *_: team.stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    ok = False
    try:
        yield team
        ok = True
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        teardown(team, wait=ok)  # after an error the other ranks may be gone: do not wait for them
