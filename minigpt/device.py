"""Device and precision: pick cuda, then mps, then cpu, and use bf16 autocast where it pays."""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class Precision:
    device: str   # "cpu", "cuda", "cuda:1", "mps"
    dtype: str    # "float32" or "bfloat16" (autocast; weights stay fp32)

    def autocast(self):
        """Context manager for forward passes: bf16 autocast, or nothing for fp32."""
        if self.dtype == "bfloat16":
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

    On CPUs, bf16 only pays for wide models: for a 128-wide one the per-op overheads dominate
    (measured here: ~1x), for a 384-wide one it is ~3x. So "auto" uses it from 256 wide up.
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
    if base == "cuda" and torch.cuda.is_bf16_supported():
        return Precision(device, "bfloat16")
    if base == "cpu" and cpu_has_native_bf16() and (n_embd or 0) >= 256:
        return Precision(device, "bfloat16")
    return Precision(device, "float32")
