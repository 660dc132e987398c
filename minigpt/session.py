"""The playground's per-session logic: what the page's handlers call, as plain Python (no Gradio).

`Playground` is made once by the app: it holds the shipped model (loaded lazily, shared read-only),
the data cache and a registry of `Session`s keyed by the browser's session hash (behind a lock,
with an LRU cap and an idle sweep). A `Session` is one user's model, training run and stop flag:
it trains (a generator of throttled `TrainView`s), stops, continues, resets, saves and loads
checkpoints, compares sampling strategies, and reads attention weights. Bad input raises
ValueError (or CheckpointError / DataError, both ValueErrors) and never touches the current model.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import __version__
from .batch_generate import generate_batch
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DataError, decode_text, load_text, split_ids
from .device import pick_device, pick_precision
from .experiments import model_scores
from .generate import generate, perplexity, start_ids
from .limits import Limits, check_float, check_int, check_text
from .model import GPT, GPTConfig, estimate_params
from .sampling import SamplingConfig
from .tokenizers import BPETokenizer, CharTokenizer, build_tokenizer
from .train import Done, Eval, Run, Sample, Start, Step, TrainConfig, train
from .training_queue import lower_thread_priority

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "shakespeare-char.safetensors"
SHAKESPEARE = "shakespeare"
TEMPERATURES = (0.5, 1.0, 2.0)  # the next-token chart shows the same logits at each


# ---- the training form --------------------------------------------------------------------------

@dataclass
class TrainSpec:
    """Everything the Train tab's knobs say; `configs()` turns it into validated configs."""
    data: str = SHAKESPEARE     # "shakespeare" or "text" (pasted or uploaded)
    text: str = ""              # the training text when data == "text"
    tokenizer: str = "char"     # char | gpt2
    model: str = "gpt"          # gpt | bigram
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 4
    block_size: int = 64
    dropout: float = 0.0
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    budget: str = "seconds"     # seconds | iterations
    amount: float = 60          # how many of them
    eval_interval: int = 100    # steps between loss estimates (a sample every 2 evals)
    seed: int = 1337
    sample_tokens: int = 200    # length of the samples shown while training

    def model_config(self, vocab_size: int, limits: Limits) -> GPTConfig:
        if self.model not in ("gpt", "bigram"):
            raise ValueError(f"model must be gpt or bigram, got {self.model!r}")
        cfg = GPTConfig(vocab_size=vocab_size, block_size=check_int("context length", self.block_size, 1, limits.max_context),
                        n_layer=check_int("layers", self.n_layer, 1, limits.max_layers),
                        n_head=check_int("heads", self.n_head, 1, limits.max_heads),
                        n_embd=check_int("embedding size", self.n_embd, 1, limits.max_embd),
                        dropout=check_float("dropout", self.dropout, 0.0, 1.0, hi_open=True), model=self.model)
        if cfg.model == "gpt" and cfg.n_embd % cfg.n_head:
            raise ValueError(f"embedding size {cfg.n_embd} is not divisible by {cfg.n_head} heads: each head gets "
                             f"n_embd / n_head dimensions (try {cfg.n_head * max(1, round(cfg.n_embd / cfg.n_head))} "
                             f"or a head count that divides {cfg.n_embd})")
        return cfg.validate(limits)

    def train_config(self, limits: Limits) -> TrainConfig:
        if self.budget not in ("seconds", "iterations"):
            raise ValueError(f"budget must be seconds or iterations, got {self.budget!r}")
        if self.budget == "seconds":
            secs = check_float("seconds", self.amount, 0.0, limits.max_train_seconds, lo_open=True)
            iters = limits.max_iters  # the schedule follows the clock
        else:
            iters = check_int("iterations", self.amount, 1, limits.max_iters)
            secs = limits.max_train_seconds  # the time limit holds for every run
        cfg = TrainConfig(batch_size=check_int("batch size", self.batch_size, 1, limits.max_batch),
                          lr=check_float("learning rate", self.lr, 0.0, 1.0, lo_open=True),
                          max_iters=iters, max_seconds=secs,
                          eval_interval=check_int("eval interval", self.eval_interval, 1, limits.max_iters),
                          warmup_iters=min(50, max(iters // 10, 1)),
                          seed=check_int("seed", self.seed, 0, 2**31 - 1),
                          sample_tokens=check_int("sample tokens", self.sample_tokens, 1, limits.max_new_tokens))
        cfg.min_lr = min(cfg.min_lr, cfg.lr / 10)
        return cfg.validate(limits)


# ---- what the page draws --------------------------------------------------------------------------

@dataclass
class ModelRef:
    """The model a session uses now, and where it came from."""
    model: torch.nn.Module
    tokenizer: object
    source: str                                 # e.g. "shipped", "trained in this session", "uploaded x.safetensors"
    card: dict = field(default_factory=dict)    # the run card (checkpoint metadata or run.run_card())
    shared: bool = False                        # the shipped model: read-only, never trained in place


class Thinned:
    """A list that keeps at most about `cap` points by doubling its stride (for light live plots)."""

    def __init__(self, cap: int = 400):
        self.cap, self.stride, self.count, self.items = cap, 1, 0, []

    def add(self, item):
        if self.count % self.stride == 0:
            self.items.append(item)
            if len(self.items) > self.cap:
                self.items = self.items[::2]
                self.stride *= 2
        self.count += 1


@dataclass
class TrainView:
    """A snapshot of a training run for the page (copied lists: safe to hand to another thread)."""
    state: str = "idle"         # idle | training | stopping | done
    iter: int = 0
    start_iter: int = 0
    loss: float | None = None
    val_loss: float | None = None
    tokens_per_s: float = 0.0
    elapsed: float = 0.0
    eta: float = 0.0
    progress: float = 0.0
    params: int = 0
    device: str = ""
    dtype: str = ""
    steps: list = field(default_factory=list)   # (iter, batch loss), thinned
    evals: list = field(default_factory=list)   # (iter, train estimate, val estimate)
    sample: str = ""
    sample_iter: int | None = None
    reason: str = ""
    message: str = ""
    final_val_loss: float | None = None
    card: dict = field(default_factory=dict)


@dataclass
class Estimate:
    """The Train tab's live read-out of a configuration, or the reason it cannot work."""
    ok: bool
    error: str = ""
    params: int = 0
    vocab_size: int = 0
    memory_mb: float = 0.0
    step_ms: float = 0.0
    iters: int = 0
    seconds: float = 0.0
    notes: list = field(default_factory=list)


# ---- speed model for the estimate ---------------------------------------------------------------

# Rough defaults for time per step = overhead + FLOPs / rate, refined by each finished run in this process.
SPEED = {"cpu": (100e9, 3e-3, 1.5e-3), "cuda": (20e12, 8e-3, 1e-3), "mps": (2e12, 10e-3, 2e-3)}


def train_flops_per_token(cfg: GPTConfig) -> float:
    """≈ 6 × non-embedding parameters + attention (PaLM appendix B), forward and backward."""
    if cfg.model == "bigram":
        return 6.0 * cfg.vocab_size
    params = estimate_params(cfg) - cfg.block_size * cfg.n_embd
    return 6.0 * params + 12.0 * cfg.n_layer * cfg.block_size * cfg.n_embd


def train_memory_bytes(cfg: GPTConfig, batch_size: int) -> float:
    """Weights, gradients and two AdamW moments (16 bytes a parameter) plus fp32 activations."""
    p = estimate_params(cfg)
    B, T, V = batch_size, cfg.block_size, cfg.vocab_size
    if cfg.model == "bigram":
        acts = B * T * V * 4 * 3
    else:
        per_layer = 34 * cfg.n_embd + 5 * cfg.n_head * T  # activation elements per token per layer (Korthikanti et al.)
        acts = B * T * (cfg.n_layer * per_layer + 3 * V) * 4
    return 16.0 * p + acts


@contextlib.contextmanager
def one_thread():
    """Run a small inference step on one intra-op thread, then restore this thread's setting.

    Decoding one token at a time is a chain of tiny ops: on a busy 2-core machine (someone is
    training) two OpenMP threads spend their time waiting for each other, measured here 10-30x
    slower than one. The setting is per thread, so it must not span a `yield` (the next chunk of a
    streamed handler may run on another worker thread).
    """
    prev = torch.get_num_threads()
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


# ---- the registry ---------------------------------------------------------------------------------

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
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._shipped: ModelRef | None = None
        self._shipped_lock = threading.Lock()
        self._data: OrderedDict[tuple, tuple] = OrderedDict()  # (text hash, tokenizer) -> (tokenizer, ids)
        self._data_lock = threading.Lock()
        self._last_sweep = time.monotonic()
        kind = self.device.split(":")[0]
        self.speed = dict(zip(("rate", "overhead", "per_layer"), SPEED.get(kind, SPEED["cpu"])))
        self.speed.update(factor=1.0, calibrated=False)

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
            return tokenizer, torch.tensor(tokenizer.encode(text), dtype=torch.long), text

        def build():
            tok = build_tokenizer(kind, text)
            return tok, torch.tensor(tok.encode(text), dtype=torch.long)
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

    def drop(self, key: str) -> bool:
        """Forget a session (its tab closed): stop its training; the model goes with the last reference."""
        with self._lock:
            s = self._sessions.pop(key, None)
        if s is not None:
            s.stop_event.set()
        return s is not None

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key) -> bool:
        return key in self._sessions

    # -- the estimate shown while the knobs move --

    def vocab_size(self, spec: TrainSpec) -> int:
        if spec.data == SHAKESPEARE and spec.tokenizer == "char":
            return 65  # known without reading the text
        return self.text_and_ids(spec.data, spec.text, spec.tokenizer)[0].vocab_size

    def estimate(self, spec: TrainSpec) -> Estimate:
        """Parameters, memory and time of `spec`, or the first reason it cannot run."""
        try:
            vocab = self.vocab_size(spec)
            cfg = spec.model_config(vocab, self.limits)
            tcfg = spec.train_config(self.limits)
        except ValueError as e:
            return Estimate(ok=False, error=str(e))
        step = self.step_seconds(cfg, tcfg.batch_size)
        if spec.budget == "seconds":
            seconds = float(spec.amount)
            iters = int(seconds / step)
        else:
            iters = int(spec.amount)
            seconds = min(iters * step, self.limits.max_train_seconds)
        notes = []
        if spec.budget == "iterations" and iters * step > self.limits.max_train_seconds:
            notes.append(f"stops at the time limit of {self.limits.max_train_seconds:g} s (MINIGPT_MAX_TRAIN_SECONDS)")
        if cfg.model == "bigram":
            notes.append("the bigram model ignores the shape knobs: it is one vocab × vocab table")
        return Estimate(ok=True, params=estimate_params(cfg), vocab_size=vocab,
                        memory_mb=train_memory_bytes(cfg, tcfg.batch_size) / 2**20, step_ms=step * 1000,
                        iters=iters, seconds=seconds, notes=notes)

    def step_seconds(self, cfg: GPTConfig, batch_size: int) -> float:
        """Predicted seconds per training step: fixed overheads plus FLOPs at a rate, times the calibration."""
        flops = train_flops_per_token(cfg) * batch_size * cfg.block_size
        layers = cfg.n_layer if cfg.model == "gpt" else 0
        raw = self.speed["overhead"] + self.speed["per_layer"] * layers + flops / self.speed["rate"]
        return raw * self.speed["factor"]

    def calibrate(self, cfg: GPTConfig, batch_size: int, measured_step: float):
        """Move the estimate halfway (in log scale) towards a finished run's measured step time, within 4×."""
        predicted = self.step_seconds(cfg, batch_size) / self.speed["factor"]
        ratio = min(4.0, max(0.25, measured_step / max(predicted, 1e-9)))
        self.speed["factor"] = math.sqrt(self.speed["factor"] * ratio)
        self.speed["calibrated"] = True


# ---- one user's session -------------------------------------------------------------------------

class Session:
    """One browser tab (or one gradio_client Client): its model, run, stop flag and last results."""

    def __init__(self, playground: Playground, key: str):
        self.pg = playground
        self.key = key
        self.last_seen = time.monotonic()
        self.stop_event = threading.Event()
        self._train_lock = threading.Lock()   # one training at a time in a session
        self._idle = threading.Event()        # set whenever no training runs
        self._idle.set()
        self.run: Run | None = None
        self.owned: ModelRef | None = None    # None: the shipped model
        self.view = TrainView()
        self.comparison: dict = {}            # column name -> {"prompt_ids", "ids", ...} of the last comparison
        self.last_columns: list = []          # the last comparison as drawn (for re-colouring)
        self.last_prompt = ""
        self.cache_speed: dict = {}           # "on"/"off" -> tokens/s measured by `generate`
        self.version = 0                      # bumped whenever the current model changes
        self._old_steps: list = []            # the batch-loss curve so far, for Continue

    # -- the current model --

    @property
    def training(self) -> bool:
        return not self._idle.is_set()

    def current(self) -> ModelRef:
        return self.owned if self.owned is not None else self.pg.shipped()

    def resident_params(self) -> int:
        """Parameters this session alone keeps in memory (0 while it uses the shared shipped model)."""
        ref = self.owned  # read once: another thread may reset it meanwhile
        return ref.model.num_params() if ref is not None else 0

    def inference_model(self) -> ModelRef:
        """The current model, or a copy of it while it trains (generation flips eval mode; training must not see that)."""
        ref = self.current()
        if self.training and not ref.shared:
            return ModelRef(copy.deepcopy(ref.model).eval().requires_grad_(False), ref.tokenizer, ref.source, ref.card)
        return ref

    def info(self) -> dict:
        """Config, parameter count, device and training summary of the current model."""
        ref = self.current()
        model, cfg = ref.model, ref.model.config
        device = str(next(model.parameters()).device)
        # Training may use bf16 autocast; generation and the views always run the fp32 weights as they are.
        training_dtype = self.run.precision.dtype if (self.run is not None and model is self.run.model) \
            else ref.card.get("dtype")
        return {"source": ref.source, "config": cfg.to_dict(), "params": model.num_params(),
                "tokenizer": ref.tokenizer.kind, "vocab_size": ref.tokenizer.vocab_size, "device": device,
                "dtype": "float32", "training_dtype": training_dtype, "training": dict(ref.card), "training_now": self.training,
                "minigpt_version": __version__, "torch_version": torch.__version__}

    # -- training --

    def train(self, spec: TrainSpec, resume: bool = False, interval: float = 0.5):
        """Train (a fresh run, or continue this session's run), yielding a TrainView every `interval` s.

        The trainer runs in a thread of its own, exactly as the CLI runs it: the page only takes
        snapshots of what its events say, so a slow browser never slows training, and the loop
        stays on one thread for the whole run (torch's thread settings are per thread; a streamed
        handler's chunks run on whichever worker thread is free). Setup errors raise ValueError
        before anything changes. If the consumer stops early (the browser's Stop cancels the
        request), the run is stopped and finished cleanly all the same.
        """
        limits = self.pg.limits
        if not self._train_lock.acquire(blocking=False):
            raise ValueError("this session is already training: stop it first")
        try:
            tcfg = spec.train_config(limits)
            run = self._resumed_run(spec) if resume else self._new_run(spec)
            self._idle.clear()
            self.stop_event.clear()
        except BaseException:
            self._train_lock.release()
            raise
        try:
            self.run = run
            self.owned = ModelRef(run.model, run.tokenizer, "trained in this session", run.run_card())
            self.version += 1
            view = self.view = TrainView(state="training", iter=run.iters, start_iter=run.iters,
                                         evals=[(e.iter, e.train_loss, e.val_loss) for e in run.history],
                                         sample=self.view.sample if resume else "", message=self._shape_note(spec))
            steps = Thinned()
            for it, loss in (self._old_steps if resume else []):
                steps.add((it, loss))
            lock, news, finished, failure = threading.Lock(), threading.Event(), threading.Event(), []

            def work():
                torch.set_num_threads(self.pg.threads)  # this thread's own setting, as in the CLI's main thread
                lower_thread_priority()  # the interactive calls of every tab come first; training takes what is left
                try:
                    for ev in train(run, tcfg, self.stop_event, limits):
                        with lock:
                            self._apply(view, ev, steps)
                        if isinstance(ev, (Start, Sample, Done)):
                            news.set()  # worth showing at once
                except BaseException as e:  # handed to the consumer
                    failure.append(e)
                finally:
                    finished.set()
                    news.set()

            worker = threading.Thread(target=work, name=f"minigpt-train-{self.key[:8]}", daemon=True)
            worker.start()
            interval = max(interval, 0.05)  # a busier loop here would take the GIL from the trainer
            try:
                while not finished.is_set():
                    news.wait(interval)
                    news.clear()
                    with lock:
                        snap = self._snapshot(view, steps)
                    if snap.state == "done" or finished.is_set():
                        break  # the final view comes once, after the trainer has finished
                    yield snap
                worker.join()
                if failure:
                    raise failure[0]
                yield self._snapshot(view, steps)
            finally:
                if worker.is_alive():  # closed early: stop, and let the run finish whole (model, card)
                    self.stop_event.set()
                    worker.join()
                self._old_steps = list(steps.items)
                self.view = self._snapshot(view, steps)
                run.model.eval()  # inference mode between trainings (train() switches it back)
                self.version += 1
        finally:
            self._idle.set()
            self._train_lock.release()

    def _apply(self, view: TrainView, ev, steps: Thinned):
        if isinstance(ev, Start):
            view.params, view.device, view.dtype = ev.params, ev.device, ev.dtype
        elif isinstance(ev, Step):
            view.iter, view.loss, view.tokens_per_s = ev.iter, ev.loss, ev.tokens_per_s
            view.elapsed, view.eta, view.progress = ev.elapsed, ev.eta, ev.progress
            steps.add((ev.iter, ev.loss))
        elif isinstance(ev, Eval):
            view.val_loss = ev.val_loss
            view.evals.append((ev.iter, ev.train_loss, ev.val_loss))
        elif isinstance(ev, Sample):
            view.sample, view.sample_iter = ev.text, ev.iter
        elif isinstance(ev, Done):
            view.state, view.reason, view.message = "done", ev.reason, ev.message or view.message
            view.iter, view.final_val_loss = ev.iters, ev.final_val_loss
            view.progress = 1.0 if ev.reason in ("max_iters", "max_seconds", "target") else view.progress
            view.eta = 0.0
            if ev.tokens_per_s:
                view.tokens_per_s = ev.tokens_per_s
            run = self.run
            view.card = run.run_card()
            if self.owned is not None and self.owned.model is run.model:
                self.owned.card = view.card
            batch = run.last_train_config["batch_size"]
            if run.iters - view.start_iter >= 50 and ev.tokens_per_s > 0:
                self.pg.calibrate(run.model.config, batch, batch * run.model.config.block_size / ev.tokens_per_s)

    @staticmethod
    def _snapshot(view: TrainView, steps: Thinned) -> TrainView:
        snap = copy.copy(view)
        snap.steps, snap.evals, snap.card = list(steps.items), list(view.evals), dict(view.card)
        return snap

    def _new_run(self, spec: TrainSpec) -> Run:
        tok, ids, _ = self.pg.text_and_ids(spec.data, spec.text, spec.tokenizer)
        cfg = spec.model_config(tok.vocab_size, self.pg.limits)
        splits = split_ids(ids)
        self._check_length(splits, cfg.block_size)
        self._old_steps = []
        name = SHAKESPEARE if spec.data == SHAKESPEARE else "pasted text"
        return Run.create(cfg, tok, splits, device=self.pg.device, seed=int(spec.seed), data_name=name)

    def _resumed_run(self, spec: TrainSpec) -> Run:
        """This session's run, or a new run that fine-tunes a copy of the current (shipped/uploaded) model."""
        if self.run is not None and self.owned is not None and self.owned.model is self.run.model:
            return self.run
        ref = self.current()
        tok, ids, _ = self.pg.text_and_ids(spec.data, spec.text, None, tokenizer=ref.tokenizer)
        splits = split_ids(ids)
        self._check_length(splits, ref.model.config.block_size)
        model = copy.deepcopy(ref.model).requires_grad_(True).to(self.pg.device)
        cfg = ref.model.config
        precision = pick_precision(self.pg.device, "auto", cfg.n_embd if cfg.model == "gpt" else None)
        self._old_steps = []
        return Run(model=model, tokenizer=ref.tokenizer, splits=splits, precision=precision,
                   data_name=SHAKESPEARE if spec.data == SHAKESPEARE else "pasted text",
                   iters=int(ref.card.get("iters", 0) or 0), seconds=float(ref.card.get("seconds", 0) or 0))

    def _shape_note(self, spec: TrainSpec) -> str:
        """Continue keeps the model's shape: say so when the knobs now ask for another one."""
        cfg = self.run.model.config if self.run is not None else None
        if cfg is None or self.run.iters == 0:
            return ""
        knobs = (spec.model, spec.n_layer, spec.n_head, spec.n_embd, spec.block_size)
        if cfg.model == "bigram":
            same = spec.model == "bigram"
        else:
            same = knobs == (cfg.model, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size)
        return "" if same else ("Continue keeps this model's shape and data; the shape knobs apply to the next "
                                "Start.")

    @staticmethod
    def _check_length(splits, block: int):
        if len(splits.train) <= block + 1:
            raise DataError(f"the text gives {len(splits.train)} training tokens, too few for a context of "
                            f"{block}: use more text or a shorter context")

    def stop(self, wait: float = 15.0) -> TrainView:
        """Ask the training to stop (it checks every step) and wait for it to wrap up; the model stays."""
        self.stop_event.set()
        self._idle.wait(wait)
        return self.view

    def reset(self) -> None:
        """Forget this session's run and model: back to the shipped one."""
        if self.training:
            self.stop()
        self.run, self.owned, self.view, self._old_steps = None, None, TrainView(), []
        self.comparison, self.last_columns = {}, []
        self.version += 1

    # -- checkpoints --

    def save(self, folder) -> Path:
        """Write the current model (weights, tokenizer, run card) to a .safetensors file in `folder`."""
        ref = self.current()
        card = self.run.run_card() if (self.run is not None and ref.model is self.run.model) else ref.card
        name = "minigpt-" + ("shipped" if ref.shared else f"{ref.model.config.model}-{card.get('iters', 0)}it")
        path = Path(folder) / f"{name}.safetensors"
        model = copy.deepcopy(ref.model) if self.training else ref.model
        return save_checkpoint(path, model, ref.tokenizer, card)

    def load(self, path) -> dict:
        """Load and validate a checkpoint; on success it becomes the current model (CheckpointError otherwise)."""
        if self.training:
            raise ValueError("stop the training before loading another model")
        if path is None:
            raise ValueError("choose a .safetensors file to upload")
        p = Path(path)
        if p.is_file() and p.stat().st_size > self.pg.limits.max_upload_bytes:
            raise ValueError(f"{p.name} is over the upload limit of {self.pg.limits.max_upload_mb:g} MB")
        ck = load_checkpoint(p, device=self.pg.device, limits=self.pg.limits)
        ck.model.eval()
        self.owned = ModelRef(ck.model, ck.tokenizer, f"uploaded {p.name}", ck.training)
        self.run, self.comparison, self.last_columns, self.view, self._old_steps = None, {}, [], TrainView(), []
        self.version += 1
        return self.info()

    def load_shipped(self) -> dict:
        if self.training:
            raise ValueError("stop the training before loading another model")
        self.pg.shipped()
        self.owned, self.run, self.comparison, self.last_columns = None, None, {}, []
        self.view, self._old_steps = TrainView(), []
        self.version += 1
        return self.info()

    # -- generation --

    def generate(self, prompt: str, tokens: int, sampling: SamplingConfig, seed: int, use_cache: bool = True,
                 interval: float = 0.1):
        """Stream (text so far, stats) for one strategy; records tokens/s for the cache on/off read-out."""
        n = check_int("tokens", tokens, 1, self.pg.limits.max_new_tokens)
        seed = check_int("seed", seed, 0, 2**63 - 1)
        prompt = check_text("prompt", prompt, self.pg.limits.max_prompt_chars)
        ref = self.inference_model()
        steps = generate(ref.model, ref.tokenizer, prompt, n, sampling.validate(), seed=seed,
                         use_cache=bool(use_cache), top_n=1)
        self.last_prompt = prompt
        t0 = time.perf_counter()
        out, last = [], 0.0
        text = ""
        while True:
            with one_thread():
                step = next(steps, None)
            if step is None:
                break
            out.append(step)
            text += step.text
            now = time.perf_counter()
            if now - last >= interval:
                last = now
                yield text, self._gen_stats(out, now - t0, use_cache, final=False)
        stats = self._gen_stats(out, time.perf_counter() - t0, use_cache, final=True)
        stats["context"] = ref.model.config.block_size
        stats["cache_full_after"] = max(0, ref.model.config.block_size - len(start_ids(ref.tokenizer, prompt)))
        self.cache_speed["on" if use_cache else "off"] = stats["tokens_per_s"]
        yield text, stats

    def prompt_note(self, prompt: str) -> str | None:
        """A sentence when the prompt is longer than the model's context (generation keeps only its end)."""
        prompt = check_text("prompt", prompt, self.pg.limits.max_prompt_chars)
        ref = self.current()
        n, block = len(start_ids(ref.tokenizer, prompt)), ref.model.config.block_size
        if n <= block:
            return None
        return f"The prompt is {n} tokens long and the model's context is {block}: it sees only the last {block}."

    def _gen_stats(self, steps, seconds, use_cache, final):
        mean_ll, ppl = perplexity(steps)
        return {"tokens": len(steps), "seconds": round(seconds, 3), "tokens_per_s": len(steps) / max(seconds, 1e-9),
                "mean_loglik": mean_ll, "perplexity": ppl, "kv_cache": bool(use_cache), "done": final}

    def compare(self, prompt: str, tokens: int, seed: int, strategies: list[tuple[str, SamplingConfig]],
                use_cache: bool = True, interval: float = 0.15):
        """Run every (name, sampling) from the same prompt and seed, round-robin, yielding the columns so far.

        Each column: name, sampling, tokens (text, prob, top alternatives), text, stats. The last
        comparison is kept so `next_token` can explain any of its steps.
        """
        n = check_int("tokens", tokens, 1, self.pg.limits.max_new_tokens)
        seed = check_int("seed", seed, 0, 2**63 - 1)
        if not strategies:
            raise ValueError("choose at least one sampling strategy")
        if len({name for name, _ in strategies}) != len(strategies):
            raise ValueError("strategy names must be distinct")
        prompt = check_text("prompt", prompt, self.pg.limits.max_prompt_chars)
        ref = self.inference_model()
        prompt_ids = start_ids(ref.tokenizer, prompt)  # fails here on unknown characters, before any output
        self.last_prompt = prompt
        cols = []
        for name, sampling in strategies:
            sampling.validate()
            cols.append({"name": name, "sampling": sampling.to_dict(), "tokens": [], "text": "", "ids": [],
                         "seconds": 0.0, "done": False})
        # One batch for every strategy: one forward pass a token, the same tokens as each alone.
        steps = generate_batch(ref.model, ref.tokenizer, prompt, n, [s for _, s in strategies], seed=seed,
                               use_cache=use_cache, top_n=5)
        last = time.perf_counter()
        while True:
            t = time.perf_counter()
            with one_thread():
                row = next(steps, None)
            spent = time.perf_counter() - t  # every column waited for the whole batched step
            if row is None:
                break
            for c, step in zip(cols, row):
                c["seconds"] += spent
                c["ids"].append(step.id)
                c["text"] += step.text
                c["tokens"].append((step.text, step.prob, [(ref.tokenizer.pieces([j])[0], p)
                                                           for j, p in zip(step.top_ids, step.top_probs)],
                                    step.logprob))
            now = time.perf_counter()
            if now - last >= interval:
                last = now
                yield self._columns(cols, prompt)
        for c in cols:
            c["done"] = True
        self.last_columns = self._columns(cols, prompt)
        self.comparison = {c["name"]: {"prompt_ids": prompt_ids, "ids": list(c["ids"]), "sampling": c["sampling"],
                                       "version": self.version} for c in cols}
        yield self.last_columns

    @staticmethod
    def _columns(cols, prompt):
        out = []
        for c in cols:
            lps = [t[3] for t in c["tokens"]]
            mean_ll = sum(lps) / len(lps) if lps else float("nan")
            out.append({"name": c["name"], "sampling": c["sampling"], "prompt": prompt, "text": c["text"],
                        "tokens": list(c["tokens"]), "n": len(lps), "mean_loglik": mean_ll,
                        "perplexity": math.exp(-mean_ll) if lps else float("nan"),
                        "repeats": repeat_fraction(c["ids"]),
                        "tokens_per_s": len(lps) / max(c["seconds"], 1e-9), "done": c["done"]})
        return out

    @torch.no_grad()
    def next_token(self, name: str, step: int, top: int = 10) -> dict:
        """The distribution the model gave at `step` (1-based) of the last comparison's column `name`,
        the token that column chose, and the same logits at several temperatures."""
        if not self.comparison:
            raise ValueError("run a sampling comparison first (Generate tab, Compare)")
        if name not in self.comparison:
            raise ValueError(f"no column {name!r} in the last comparison (have: {', '.join(self.comparison)})")
        col = self.comparison[name]
        step = min(check_int("step", step, 1, 1_000_000), len(col["ids"]))  # a longer run's step: its last
        ref = self.inference_model()
        model, tok = ref.model, ref.tokenizer
        context = (col["prompt_ids"] + col["ids"][:step - 1])[-model.config.block_size:]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with one_thread():
                logits = model(torch.tensor([context], dtype=torch.long, device=device))[0][0, -1].float().cpu()
        finally:
            model.train(was_training)
        chosen = col["ids"][step - 1]
        probs = torch.softmax(logits, -1)
        order = torch.argsort(probs, descending=True)
        ids = order[:top].tolist()
        if chosen not in ids:
            ids.append(chosen)
        rank = int((order == chosen).nonzero()[0, 0]) + 1
        return {"column": name, "step": step, "context": tok.decode(context[-40:]), "ids": ids,
                "pieces": tok.pieces(ids), "chosen": chosen, "chosen_piece": tok.pieces([chosen])[0],
                "chosen_rank": rank, "sampling": col["sampling"],
                "probs": {t: torch.softmax(logits / t, -1)[ids].tolist() for t in TEMPERATURES},
                "changed": self.training or self.version != col["version"]}

    # -- attention --

    @torch.no_grad()
    def attention(self, text: str | None = None, max_tokens: int = 96) -> dict:
        """Attention weights of every layer and head for `text` (or the last prompt): tokens, (L, nh, T, T).

        Long texts keep their last min(context, max_tokens) tokens: a bigger map is unreadable."""
        ref = self.inference_model()
        model, tok = ref.model, ref.tokenizer
        if not isinstance(model, GPT):
            raise ValueError("the bigram model has no attention: each token looks only at itself. Train or load a GPT")
        ids = tok.encode(self._view_text(text))
        if not ids:
            raise ValueError("enter some text to look at")
        block = model.config.block_size
        keep = min(block, max_tokens)
        cropped = len(ids) > keep
        ids = ids[-keep:]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with one_thread():
                _, _, atts = model(torch.tensor([ids], dtype=torch.long, device=device), return_attn=True)
        finally:
            model.train(was_training)
        weights = torch.stack([a[0] for a in atts]).float().cpu()  # (L, nh, T, T)
        return {"tokens": tok.pieces(ids), "weights": weights, "cropped": cropped, "block_size": block,
                "shown_max": max_tokens,
                "n_layer": model.config.n_layer, "n_head": model.config.n_head}

    def score_scale(self, text: str | None = None):
        """Experiment 4 on the current model: per layer, the spread of its real q·k scores over `text`
        (or the last prompt; its last block_size tokens) with and without 1/sqrt(d) (a ModelScores)."""
        ref = self.inference_model()
        return model_scores(ref.model, ref.tokenizer.encode(self._view_text(text)))

    def _view_text(self, text) -> str:
        """The text a view looks at: the one given, else the last prompt, else a line of Romeo."""
        text = check_text("text", text, self.pg.limits.max_prompt_chars)
        return text if text.strip() else (self.last_prompt or "ROMEO:\nBut soft, what light")


# ---- stateless views ------------------------------------------------------------------------------

def repeat_fraction(ids, n: int = 4) -> float:
    """Share of the n-grams of `ids` that already occurred earlier (greedy decoding loops score high)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    seen, again = set(), 0
    for g in grams:
        again += g in seen
        seen.add(g)
    return again / len(grams)


def tokenize(text: str, char_vocab: str) -> dict:
    """The same text through the character tokenizer (vocabulary `char_vocab`) and GPT-2 BPE.

    Characters outside `char_vocab` get id None: the char model has no token for them.
    """
    if text is None:
        text = ""
    chars = CharTokenizer(list(char_vocab))
    char_tokens = [(c, chars.stoi.get(c)) for c in text]
    bpe = BPETokenizer()  # the full GPT-2 vocabulary (the encoding is built once per process)
    gids = bpe.encode(text)
    pieces = bpe.pieces(gids)
    return {"text": text, "chars": len(text),
            "char": {"tokens": char_tokens, "count": len(char_tokens), "vocab_size": chars.vocab_size,
                     "unknown": sorted({c for c, i in char_tokens if i is None})},
            "gpt2": {"tokens": list(zip(pieces, gids)), "count": len(gids), "vocab_size": bpe.vocab_size}}


def sampling_columns(greedy: bool = True, multinomial: bool = True, low_t: float | None = 0.5,
                     high_t: float | None = 2.0, top_k: int | None = None, top_p: float | None = None):
    """The comparison's (name, SamplingConfig) columns from the Generate tab's switches."""
    cols = []
    if greedy:
        cols.append(("greedy", SamplingConfig("greedy")))
    if multinomial:
        cols.append(("multinomial (T = 1)", SamplingConfig("multinomial")))
    for t in (low_t, high_t):
        if t is not None:
            t = check_float("temperature", t, 0.0, 100.0, lo_open=True)
            name = f"temperature T = {t:g}"
            if name not in [c[0] for c in cols]:
                cols.append((name, SamplingConfig("temperature", t)))
    if top_k is not None:
        k = check_int("top-k", top_k, 1, 1_000_000)
        cols.append((f"top-k (k = {k})", SamplingConfig("multinomial", top_k=k)))
    if top_p is not None:
        p = check_float("top-p", top_p, 0.0, 1.0, lo_open=True)
        cols.append((f"top-p (p = {p:g})", SamplingConfig("multinomial", top_p=p)))
    return cols


def read_text_file(path, limits: Limits) -> str:
    """An uploaded training text: UTF-8, not binary, not empty, under the upload limit."""
    p = Path(path)
    if not p.is_file():
        raise DataError("the uploaded file is missing; upload it again")
    if p.stat().st_size > limits.max_upload_bytes:
        raise DataError(f"{p.name} is over the upload limit of {limits.max_upload_mb:g} MB (MINIGPT_MAX_UPLOAD_MB)")
    return decode_text(p.read_bytes(), name=p.name, max_bytes=limits.max_upload_bytes)


def spec_dict(spec: TrainSpec) -> dict:
    d = asdict(spec)
    d["text"] = f"<{len(spec.text)} characters>" if spec.text else ""
    return d
