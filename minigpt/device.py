"""Device and precision: pick cuda, then mps, then cpu, and use bf16 autocast where it pays.

torch is imported inside the functions that need it, so the names and `Precision` load without it
(the page's cold start).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import time
import warnings
from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class Precision:
    device: str   # "cpu", "cuda", "cuda:1", "mps"
    dtype: str    # "float32" or "bfloat16" (autocast; weights stay fp32)

    def autocast(self):
        """Context manager for forward passes: bf16 autocast, or nothing for fp32."""
        if self.dtype == "bfloat16":
            import torch
            return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def describe(self) -> str:
        return f"{self.device} ({self.dtype})"


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 is fast."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _mps_is_sane() -> bool:
    """PyTorch once garbled long generations on mps: compare a small forward pass with the CPU."""
    import torch
    try:
        g = torch.Generator().manual_seed(0)
        w, x = torch.randn(64, 64, generator=g), torch.randn(8, 64, generator=g)
        ref = torch.softmax(x @ w, dim=-1)
        got = torch.softmax(x.to("mps") @ w.to("mps"), dim=-1).cpu()
        return torch.allclose(ref, got, atol=1e-4)
    except Exception:
        return False


def pick_device(requested: str | None = None) -> str:
    """`requested` (or $MINIGPT_DEVICE), with "auto" meaning cuda, then mps, then cpu."""
    import torch
    requested = (requested or os.environ.get("MINIGPT_DEVICE") or "auto").strip().lower()
    base = requested.split(":")[0]
    if base not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but PyTorch sees no CUDA GPU")
    if base == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps was asked for, but this PyTorch has no MPS support")
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            if _mps_is_sane():
                return "mps"
            warnings.warn("mps gave results different from the CPU; using the CPU instead")
        return "cpu"
    return requested


def pick_precision(device: str, dtype: str = "auto", n_embd: int | None = None) -> Precision:
    """bf16 autocast where it is faster and safe, else fp32; dtype="float32" forces fp32.

    On some CPUs with native bf16 (AVX512-BF16 or AMX) the matmuls run ~4x faster in bf16, even for
    a 128-wide model: a training step is ~2.5x faster (128 wide) to ~3x (384 wide), measured on a
    2-core EPYC, once attention avoids SDPA's slow bf16 backward (see model.py). On others bf16 is
    slower than fp32, so on a CPU the choice is measured, once a process (`cpu_bf16_pays`).
    `n_embd` is kept for callers; the choice is the same at every width.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    base = device.split(":")[0]
    if dtype == "float32":
        return Precision(device, "float32")
    if dtype == "bfloat16":
        if base == "mps":
            raise ValueError("bfloat16 autocast is not supported on mps; use float32")
        return Precision(device, "bfloat16")
    if base == "cuda":
        import torch
        if torch.cuda.is_bf16_supported():
            return Precision(device, "bfloat16")
    if base == "cpu" and cpu_bf16_pays():
        return Precision(device, "bfloat16")
    return Precision(device, "float32")


BF16_MARGIN = 0.85  # bf16 is taken when its matmul takes at most this share of fp32's time
PROBE_ROUNDS = 15   # rounds of one fp32 and one bf16 call, back to back; their median ratio decides
BF16_ENV = "MINIGPT_CPU_BF16"  # "1" or "0": the verdict given, not measured (torchrun's ranks get rank 0's)


@functools.cache  # once a process: the answer is the machine's
def cpu_bf16_pays() -> bool:
    """True where this CPU has native bf16 and a training-sized bf16 matmul (the default model's
    MLP Linear, 128 to 512 over 1024 rows, under autocast as training runs it) is clearly faster
    than fp32; $MINIGPT_CPU_BF16 ("1" / "0") gives the answer instead.

    The instructions alone do not say it: on a 2-core Zen 4 EPYC a bf16 step of the default model
    ran ~2.5x faster than fp32 (384 wide: ~3x), but on a 2-core Xeon (Emerald Rapids, in a VM that
    hides AMX) AVX512-BF16's dot product issued at under half of fp32 FMA's rate and the step ran
    1.3-1.6x slower. So it is measured, once for every width (neighbouring widths must not get
    different answers from the noise): ~40 ms, 15 rounds of one call of each back to back, and the
    median of their ratios decides, so that a busy moment (a page load while another session
    trains, two torchrun ranks starting together) distorts a few rounds, not the verdict.
    """
    given = os.environ.get(BF16_ENV, "").strip()
    if given in ("0", "1"):
        return given == "1"
    if not cpu_has_native_bf16():
        return False
    import torch
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1024, 128, generator=g), torch.randn(512, 128, generator=g)
    linear = torch.nn.functional.linear

    def timed(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            linear(x, w)
        return time.perf_counter() - t0

    def ratio(i: int) -> float:  # bf16 first in even rounds, fp32 first in odd ones: no order bias
        if i % 2:
            fp32 = timed(False)
            bf16 = timed(True)
        else:
            bf16 = timed(True)
            fp32 = timed(False)
        return bf16 / max(fp32, 1e-9)

    # On one thread: with two, a core taken by other work (a C++ build, another session) stalls fp32's
    # and bf16's kernels unequally at their barriers, and the CI's page once measured bf16 "faster"
    # during the kernels' build. torch's count is put back at once (a thread that makes its first
    # torch call in these ~40 ms would keep one thread: the page probes as it makes its Playground).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            timed(False), timed(True)  # the first call of each sets up its kernels
            ratios = sorted(ratio(i) for i in range(PROBE_ROUNDS))
    finally:
        torch.set_num_threads(threads)
    return ratios[len(ratios) // 2] <= BF16_MARGIN


# glibc's mallopt parameters (malloc.h) and the values `keep_freed_memory` sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20   # blocks up to this come from the heap (glibc's own dynamic ceiling)
TRIM_THRESHOLD_BYTES = 256 << 20  # free memory kept at a heap's top before any is handed back


@functools.cache  # once a process: the setting is the process's, and setting it again changes nothing
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse (up to 256 MB per heap) instead of handing
    them back to the kernel; True where it was set (Linux with glibc).

    Why: a training step allocates and frees its activations (~40 MB for the default model). By
    default glibc returns large freed blocks at once (munmap, or trimming the heap's top), so the next
    step faults every page in again: up to ~10,000 page faults and ~20 ms of kernel time per step of
    the default model on the 2-core build machine (a fifth of the step in a fresh process; fewer
    where earlier large frees had raised glibc's own thresholds). The cost: a process keeps up to
    the threshold per heap after a peak, for its next use."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already has
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                               TRIM_THRESHOLD_BYTES))


class ThreadTuner:
    """Keeps a CPU training loop on whichever thread count runs it faster: all of torch's threads,
    or half of them.

    Small models gain little from a second thread (a 128-wide step: ~1.25x on 2 cores), but when
    other work shares the cores, threads wait for each other at every op: measured here, a step on
    2 threads ran up to 20x slower than on 1 while another process was busy. So the tuner times
    `window` steps on the current count, then (at the start and every `every` steps) tries the
    other count, giving up early when it is clearly slower (1.2x after `settle` timed steps, or
    whenever the probe has already cost 1.5 windows of the other count), and keeps the faster one.
    On a quiet 2-core machine one thread runs the default model's step ~1.6x slower: a probe of 20
    such steps cost ~3% of a 25-s run, 3 of them a sixth of that. `restore()` puts torch's setting
    back. Call `tick()` after each step and `pause()` before any other work (evaluation, sampling),
    so that only training steps are timed.

    `pin` (train_kernels.thread_pinner(model)), when given, keeps each thread on a core of its own while
    all of them run (`pin(True)`), and lets them go anywhere on half the threads and after `restore()`:
    a lone thread must be free to move off a core that other work has taken.
    """

    def __init__(self, window: int = 20, every: int = 400, settle: int = 3, pin=None):
        import torch
        n = torch.get_num_threads()
        self.pin = pin
        if pin is not None:
            pin(True)
        self.original = n
        self.choices = [n, max(1, n // 2)]
        self.per_step = [None, None]  # seconds per step last seen on each choice
        self.current = 0
        self.window, self.every, self.settle = window, every, settle
        self.probing = False
        self.since_probe = 0
        self.mark: float | None = None
        self.count = 0

    @property
    def active(self) -> bool:
        return self.choices[0] != self.choices[1]

    def pause(self):
        """The next tick starts a new timing window (the work in between is not a training step)."""
        self.mark = None

    def tick(self):
        if not self.active:
            return
        now = time.perf_counter()
        if self.mark is None:  # the first step after a switch or a pause warms caches: not timed
            self.mark, self.count = now, 0
            return
        self.count += 1
        self.since_probe += 1
        elapsed = now - self.mark
        other = self.per_step[1 - self.current]
        if self.probing and other is not None and (elapsed > 1.5 * self.window * other or (
                self.count >= self.settle and elapsed / self.count > 1.2 * other)):
            self._finish(elapsed / self.count)  # clearly slower: stop the probe now
        elif self.count >= self.window:
            self._finish(elapsed / self.count)

    def _finish(self, per_step: float):
        self.per_step[self.current] = per_step
        self.mark, self.count = None, 0
        if self.probing:  # both measured: keep the faster
            self.probing = False
            self.since_probe = 0
            best = min((0, 1), key=lambda i: self.per_step[i])
            self._use(best)
        elif self.per_step[1 - self.current] is None or self.since_probe >= self.every:
            self.probing = True
            self._use(1 - self.current)

    def _use(self, i: int):
        if i != self.current:
            self.current = i
            import torch
            torch.set_num_threads(self.choices[i])
            if self.pin is not None:
                self.pin(i == 0)

    def restore(self):
        import torch
        torch.set_num_threads(self.original)
        if self.pin is not None:
            self.pin(False)
