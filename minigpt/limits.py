"""Resource limits: one source of truth for the CLI, the app and the checkpoint loader.

Each limit can be set by an environment variable so a shared Space cannot be exhausted by one
user; the defaults suit a 2-core laptop or a free Space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


def _env_number(name: str, default, cast):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"environment variable {name} must be > 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class Limits:
    max_params: int = 30_000_000       # model parameters (a 6x384 char model has ~10.7M)
    max_context: int = 1024            # block_size
    max_layers: int = 24
    max_embd: int = 1536
    max_heads: int = 32
    max_vocab: int = 50_304            # GPT-2 BPE (50,257) fits
    max_batch: int = 512
    max_train_seconds: float = 3600.0  # one training run
    max_iters: int = 1_000_000
    max_new_tokens: int = 2000         # generated tokens per request
    max_training_jobs: int = 1         # concurrent training runs in one app process
    max_upload_mb: float = 10.0        # uploaded text or checkpoint
    max_prompt_chars: int = 100_000    # a prompt, or text to tokenize or look at

    ENV = {
        "max_params": "MINIGPT_MAX_PARAMS",
        "max_context": "MINIGPT_MAX_CONTEXT",
        "max_layers": "MINIGPT_MAX_LAYERS",
        "max_embd": "MINIGPT_MAX_EMBD",
        "max_heads": "MINIGPT_MAX_HEADS",
        "max_vocab": "MINIGPT_MAX_VOCAB",
        "max_batch": "MINIGPT_MAX_BATCH",
        "max_train_seconds": "MINIGPT_MAX_TRAIN_SECONDS",
        "max_iters": "MINIGPT_MAX_ITERS",
        "max_new_tokens": "MINIGPT_MAX_NEW_TOKENS",
        "max_training_jobs": "MINIGPT_MAX_TRAINING_JOBS",
        "max_upload_mb": "MINIGPT_MAX_UPLOAD_MB",
        "max_prompt_chars": "MINIGPT_MAX_PROMPT_CHARS",
    }

    @classmethod
    def from_env(cls) -> "Limits":
        """Defaults overridden by the MINIGPT_MAX_* environment variables."""
        values = {}
        for f in fields(cls):
            default = f.default
            values[f.name] = _env_number(cls.ENV[f.name], default, type(default))
        return cls(**values)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def describe(self) -> str:
        """One line per limit, for the page and `info`."""
        return "\n".join(f"{self.ENV[f.name]} = {getattr(self, f.name)}" for f in fields(self))


def check_int(name: str, value, lo: int, hi: int) -> int:
    """Return value as an int in [lo, hi] or raise a ValueError naming the field."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{name} must be a finite integer, got {value!r}")
        if not value.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    try:
        ivalue = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not lo <= ivalue <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {ivalue}")
    return ivalue


def check_float(name: str, value, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """Return value as a finite float in the range or raise a ValueError naming the field."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        fvalue = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if fvalue != fvalue or fvalue in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    below = fvalue <= lo if lo_open else fvalue < lo
    above = fvalue >= hi if hi_open else fvalue > hi
    if below or above:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {fvalue:g}")
    return fvalue


def check_text(name: str, text, max_chars: int) -> str:
    """Return text ('' for None) if it is a string of at most max_chars characters, else a ValueError."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ValueError(f"{name} is {len(text):,} characters long; the limit is {max_chars:,} (MINIGPT_MAX_PROMPT_CHARS)")
    return text
