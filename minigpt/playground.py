"""The playground's engine: the registry of sessions and what they share.

`Playground` is made once by the app. It holds the shipped model (loaded lazily, shared
read-only), the data cache, the speed model behind the Train tab's estimate, the training queue
(`limits.max_training_jobs` runs at once; the others wait their turn), the `DecodeBatcher`
whose one thread decodes concurrent Compares together, and a registry of `Session`s keyed by
the browser's session hash (behind a lock, with an LRU cap and an idle sweep). Core module:
imports minigpt's core only (never gradio or matplotlib).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .data import DataError, data_dir, encode_ids, load_text
from .decode_batcher import DecodeBatcher
from .device import pick_device, pick_precision
from .estimate import Estimate, SpeedModel, estimate
from .limits import Limits
from .session import ModelRef, Session
from .tokenizers import GPT2_VOCAB, BPETokenizer, CharTokenizer, build_tokenizer
from .training_queue import TrainingQueue
from .train_spec import SHAKESPEARE, TrainSpec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "shakespeare-char.safetensors"
SHAKESPEARE_VOCAB = 65  # distinct characters of Tiny Shakespeare


class Playground:
    """The app's one engine: shipped model, data cache, sessions. Thread-safe."""

    def __init__(self, limits: Limits | None = None, shipped_path: Path | str = SHIPPED, max_sessions: int = 64,
                 idle_seconds: float = 2 * 3600, device: str | None = None, max_resident_params: int | None = None):
        self.limits = limits or Limits.from_env()
        self.shipped_path = Path(shipped_path)
        self.max_sessions = max_sessions
        # Models kept in memory across sessions (with AdamW, ~16 bytes a parameter): four of the largest allowed.
        self.max_resident_params = max_resident_params or 4 * self.limits.max_params
        self.idle_seconds = idle_seconds
        self.device = pick_device(device)
        self.threads = torch.get_num_threads()  # what training uses (as the CLI does)
        self.speed = SpeedModel(self.device, pick_precision(self.device).dtype)  # the dtype a run's "auto" takes
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._shipped: ModelRef | None = None
        self._shipped_lock = threading.Lock()
        self._data: OrderedDict[tuple, tuple] = OrderedDict()  # (text hash, tokenizer) -> (tokenizer, ids)
        self._data_lock = threading.Lock()
        self._last_sweep = time.monotonic()
        self.training_queue = TrainingQueue(self.limits.max_training_jobs)  # max_training_jobs runs at once
        self.batcher = DecodeBatcher()  # concurrent Compares on one model share each decoding step

    # -- shared read-only things --

    def shipped(self) -> ModelRef:
        """The shipped pretrained model, loaded on first use and shared by every session."""
        with self._shipped_lock:
            if self._shipped is None:
                if not self.shipped_path.exists():
                    raise ValueError(f"no shipped model at {self.shipped_path}: train one, or upload a checkpoint")
                ck = load_checkpoint(self.shipped_path, device="cpu", limits=self.limits)
                ck.model.eval().requires_grad_(False)
                self._shipped = ModelRef(ck.model, ck.tokenizer, f"shipped ({self.shipped_path.name})",
                                         ck.training, shared=True)
            return self._shipped

    def shakespeare(self) -> str:
        return self.text_and_ids(SHAKESPEARE, "", None)[2]

    def char_vocab(self) -> str:
        """Tiny Shakespeare's characters: from the text when it is here, else from the shipped char
        model's vocabulary (the same characters), so the Tokenizer tab works offline without the text."""
        if not (data_dir() / "tinyshakespeare.txt").exists():
            try:
                tok = self.shipped().tokenizer
            except ValueError:
                tok = None
            if isinstance(tok, CharTokenizer):
                return "".join(tok.chars)
        # Cached: sorting the set of 1.1 M characters took ~40 ms of the GIL on every Tokenizer call.
        return self._cached(("shakespeare-vocab",), lambda: "".join(sorted(set(self.shakespeare()))))

    def tokenize(self, text: str) -> dict:
        """`text` split by the character tokenizer (Tiny Shakespeare's vocabulary) and by GPT-2 BPE."""
        return tokenize(text, self.char_vocab())

    def text_and_ids(self, data: str, text: str, kind: str | None, tokenizer=None):
        """(tokenizer, ids tensor, text) for the data choice; cached (Tiny Shakespeare is read once)."""
        if data == SHAKESPEARE:
            text = self._cached(("shakespeare-text",), lambda: load_text(SHAKESPEARE))
        elif data == "text":
            if not text or not text.strip():
                raise DataError("paste some text or upload a UTF-8 .txt file first (or choose Tiny Shakespeare)")
            if len(text.encode("utf-8")) > self.limits.max_upload_bytes:
                raise DataError(f"the text is over the limit of {self.limits.max_upload_mb:g} MB (MINIGPT_MAX_UPLOAD_MB)")
        else:
            raise ValueError(f"data must be shakespeare or text, got {data!r}")
        if kind is None and tokenizer is None:
            return None, None, text
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
        if tokenizer is not None:  # a given tokenizer (continuing a loaded model): encode, uncached
            return tokenizer, encode_ids(tokenizer, text), text

        def build():
            tok = build_tokenizer(kind, text)
            return tok, encode_ids(tok, text)
        tok, ids = self._cached((digest, kind), build)
        return tok, ids, text

    def _cached(self, key, make):
        with self._data_lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = make()
        with self._data_lock:
            self._data[key] = value
            while len(self._data) > 6:
                self._data.popitem(last=False)
        return value

    # -- sessions --

    def session(self, key: str) -> "Session":
        """The session for `key`, created on first use; past the cap, the least recently used idle ones go."""
        now = time.monotonic()
        with self._lock:
            s = self._sessions.get(key)
            if s is None:
                s = self._sessions[key] = Session(self, key)
            self._sessions.move_to_end(key)
            s.last_seen = now
            resident = sum(v.resident_params() for v in self._sessions.values())
            for k in [k for k, v in self._sessions.items() if k != key and not v.training]:  # oldest first
                if len(self._sessions) <= self.max_sessions and resident <= self.max_resident_params:
                    break
                resident -= self._sessions.pop(k).resident_params()
        if now - self._last_sweep > 60:
            self.sweep(now)
        return s

    def sweep(self, now: float | None = None) -> int:
        """Drop sessions idle for more than idle_seconds (a backstop for tabs whose unload never came)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._last_sweep = now
            idle = [k for k, v in self._sessions.items() if not v.training and now - v.last_seen > self.idle_seconds]
            for k in idle:
                del self._sessions[k]
        return len(idle)

    def drop(self, key: str) -> "Session | None":
        """Forget a session (its tab closed): stop its training, generation and comparison; the model
        goes with the last reference.
        Returns the session dropped (None if there was none)."""
        with self._lock:
            s = self._sessions.pop(key, None)
        self.training_queue.cancel_key(key)  # a run still waiting for its turn never starts
        if s is not None:
            s.stop_event.set()
            s.closed.set()  # its generation or comparison, still running, ends at its next token
        return s

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key) -> bool:
        return key in self._sessions

    # -- the estimate shown while the knobs move --

    def vocab_size(self, spec: TrainSpec) -> int:
        if spec.data == SHAKESPEARE and spec.tokenizer == "char":
            return SHAKESPEARE_VOCAB  # known without reading the text
        return self.text_and_ids(spec.data, spec.text, spec.tokenizer)[0].vocab_size

    def estimate(self, spec: TrainSpec) -> Estimate:
        """Parameters, memory and time of `spec`, or the first reason it cannot run."""
        try:
            vocab = self.vocab_size(spec)
        except ValueError as e:
            return Estimate(ok=False, error=str(e))
        return estimate(spec, vocab, self.limits, self.speed)


def tokenize(text: str, char_vocab: str) -> dict:
    """The same text through the character tokenizer (vocabulary `char_vocab`) and GPT-2 BPE.

    Characters outside `char_vocab` get id None: the char model has no token for them.
    """
    if text is None:
        text = ""
    chars = CharTokenizer(list(char_vocab))
    char_tokens = [(c, chars.stoi.get(c)) for c in text]
    try:
        bpe = BPETokenizer()  # the full GPT-2 vocabulary (the encoding is built once per process)
        gids = bpe.encode(text)
        gpt2 = {"tokens": list(zip(bpe.pieces(gids), gids)), "count": len(gids), "vocab_size": bpe.vocab_size}
    except OSError as e:  # offline without the ranks: the character side still works
        gpt2 = {"tokens": [], "count": 0, "vocab_size": GPT2_VOCAB,
                "error": f"GPT-2 BPE is not available here ({e}); `python -m minigpt download` fetches its ranks"}
    return {"text": text, "chars": len(text),
            "char": {"tokens": char_tokens, "count": len(char_tokens), "vocab_size": chars.vocab_size,
                     "unknown": sorted({c for c, i in char_tokens if i is None})},
            "gpt2": gpt2}
