"""A training run as the page sees it: `TrainView` snapshots of a run going on in a thread of its own.

`LiveTraining` runs `train()` in a background thread exactly as the CLI runs it and folds its
events into a `TrainView`; the page takes throttled, copied snapshots, so a slow browser never
slows training. `StopFlag` is the run's stop request and also tells when the trainer has seen it,
so Stop can answer at once ("stopped at iteration N") while the end-of-run full validation goes
on. `waiting_views` streams a run's place in the training queue until its turn. Core module: imports
the events and training_queue modules; torch and the trainer only where a run starts (the page
draws an idle TrainView before torch is loaded); never gradio or matplotlib.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .events import Done, Eval, Sample, Start, Step
from .limits import Limits
from .training_queue import Cancelled, TrainingQueue, lower_thread_priority, waiting_message

if TYPE_CHECKING:
    from .train import Run, TrainConfig

LEFT_QUEUE = "Left the training queue before its turn: nothing was trained, the model is as it was."

# The trainer thread's niceness, so the tabs' interactive calls come first. At 10 a burst of 30 sessions
# starved the one running trainer (4-13 steps in 20 s instead of 400-650); at 5 its CPU weight is a
# third of a normal thread's (335 vs 1024): it keeps moving, and the interactive calls still come first.
TRAIN_NICE = 5


GHOST_POINTS = 200


def ghost_curve(evals) -> tuple:
    """A finished run's validation curve from its (iter, train, val) estimates: (iter, val) pairs, at most
    about GHOST_POINTS."""
    points = [(it, val) for it, _, val in evals if val is not None and val == val]
    stride = -(-len(points) // GHOST_POINTS) if points else 1
    thinned = points[::stride]
    if points and thinned[-1] != points[-1]:
        thinned.append(points[-1])  # keep where it ended
    return tuple(thinned)


LAYER_HISTORY = 7  # evaluations of per-block diagnostics a view keeps (the latest and the ones drawn behind it)
LAYER_KEYS = ("layer_grad_norms", "layer_act_std", "layer_attn_entropy")


def layer_record(ev: Eval) -> dict:
    """The per-block diagnostics of one Eval event (minigpt/diagnostics.py), as minigpt/layer_plots.py reads them."""
    return {"iter": ev.iter, **{key: list(getattr(ev, key)) for key in LAYER_KEYS}}


def layer_records(evals) -> list:
    """The last LAYER_HISTORY evaluations that carry per-block diagnostics (none for the bigram)."""
    return [layer_record(e) for e in evals if e.layer_grad_norms or e.layer_act_std][-LAYER_HISTORY:]


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
    state: str = "idle"         # idle | waiting (in the queue) | training | stopping (asked) | stopped (left its
                                # loop; full val runs) | done
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
    layers: list = field(default_factory=list)  # per-block diagnostics of the last evaluations (layer_record)
    sample: str = ""
    sample_iter: int | None = None
    reason: str = ""
    message: str = ""
    final_val_loss: float | None = None
    card: dict = field(default_factory=dict)
    # The session's previous run, to compare against: its (iter, val estimate) points, thinned once to at
    # most GHOST_POINTS (a tuple: snapshots share it, never copy it), and the optimizer that trained it.
    ghost: tuple = ()
    ghost_optimizer: str = ""


def ghost_of(previous: TrainView, resume: bool) -> dict:
    """The ghost fields of a new run's first view: a continued run keeps its ghost; a fresh one gets the
    validation curve and optimizer of the session's previous run (its last view), so the loss plot can
    overlay AdamW and Muon; none when there was no run (or its card does not name the optimizer)."""
    if resume:
        return dict(ghost=previous.ghost, ghost_optimizer=previous.ghost_optimizer)
    optimizer = previous.card.get("optimizer") or ""
    return dict(ghost=ghost_curve(previous.evals) if optimizer else (), ghost_optimizer=optimizer)


class StopFlag(threading.Event):
    """A stop request that also records when the trainer saw it.

    `train()` reads its stop flag at the top of every step and leaves the loop as soon as it
    finds it set, so the first read that finds it set means: training proper is over, the model
    will not change again (only the end-of-run full validation is left). Only the trainer reads
    this flag; everyone else calls `set`.
    """

    def __init__(self):
        super().__init__()
        self.seen = threading.Event()

    def is_set(self) -> bool:
        requested = super().is_set()
        if requested:
            self.seen.set()
        return requested

    def clear(self):
        super().clear()
        self.seen.clear()


def fold_events(live, events, news: Callable[[object], bool]):
    """A live run's worker thread: fold each event into `live`'s view (`live._apply`, under its lock),
    wake the page for those `news` picks, hand any failure to the consumer, and say when it is over.
    It runs at a lower CPU priority, so the interactive calls of every tab come first."""
    import torch
    torch.set_num_threads(live.threads)  # this thread's own setting, as in the CLI's main thread
    lower_thread_priority(TRAIN_NICE)
    try:
        for ev in events:
            with live.lock:
                live._apply(ev)
            if news(ev):
                live.news.set()
    except BaseException as e:  # handed to the consumer
        live.failure.append(e)
    finally:
        live.finished.set()
        live.news.set()


class LiveTraining:
    """`train(run, cfg)` in a thread of its own, folded into a TrainView.

    `on_done(view, event)` runs in the trainer thread when the Done event arrives (under the
    view's lock), for the owner's bookkeeping (run card, speed calibration).
    """

    def __init__(self, run: Run, cfg: TrainConfig, stop: StopFlag, limits: Limits, threads: int, view: TrainView,
                 steps: Thinned, on_done: Callable[[TrainView, Done], None] | None = None, name: str = "minigpt-train"):
        self.run, self.cfg, self.stop, self.limits, self.threads = run, cfg, stop, limits, threads
        self.view, self.steps, self.on_done = view, steps, on_done
        self.lock, self.news, self.finished = threading.Lock(), threading.Event(), threading.Event()
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> "LiveTraining":
        self.thread.start()
        return self

    def _work(self):
        from .train import train
        fold_events(self, train(self.run, self.cfg, self.stop, self.limits),
                    news=lambda ev: isinstance(ev, (Start, Sample, Done)))  # worth showing at once

    def _apply(self, ev):
        view = self.view
        if isinstance(ev, Start):
            view.params, view.device, view.dtype = ev.params, ev.device, ev.dtype
        elif isinstance(ev, Step):
            view.iter, view.loss, view.tokens_per_s = ev.iter, ev.loss, ev.tokens_per_s
            view.elapsed, view.eta, view.progress = ev.elapsed, ev.eta, ev.progress
            self.steps.add((ev.iter, ev.loss))
        elif isinstance(ev, Eval):
            view.val_loss = ev.val_loss
            view.evals.append((ev.iter, ev.train_loss, ev.val_loss))
            if ev.layer_grad_norms or ev.layer_act_std:
                view.layers = [*view.layers, layer_record(ev)][-LAYER_HISTORY:]
        elif isinstance(ev, Sample):
            view.sample, view.sample_iter = ev.text, ev.iter
        elif isinstance(ev, Done):
            view.state, view.reason, view.message = "done", ev.reason, ev.message or view.message
            view.iter, view.final_val_loss = ev.iters, ev.final_val_loss
            view.progress = 1.0 if ev.reason in ("max_iters", "max_seconds", "target") else view.progress
            view.eta = 0.0
            if ev.tokens_per_s:
                view.tokens_per_s = ev.tokens_per_s
            view.card = self.run.run_card()
            if self.on_done is not None:
                self.on_done(view, ev)

    def snapshot(self) -> TrainView:
        with self.lock:
            snap = copy.copy(self.view)
            snap.steps, snap.evals, snap.card = list(self.steps.items), list(self.view.evals), dict(self.view.card)
            snap.layers = list(self.view.layers)
        return snap

    def views(self, interval: float = 0.5):
        """Snapshots at most every `interval` s (and at once on news), then the final view after the
        trainer has finished; a failure in the trainer is raised here."""
        interval = max(interval, 0.05)  # a busier loop here would take the GIL from the trainer
        while not self.finished.is_set():
            self.news.wait(interval)
            self.news.clear()
            snap = self.snapshot()
            if snap.state == "done" or self.finished.is_set():
                break  # the final view comes once, after the trainer has finished
            yield snap
        self.thread.join()
        if self.failure:
            raise self.failure[0]
        yield self.snapshot()

    def stopping(self, wait: float) -> TrainView:
        """Ask the run to stop and wait up to `wait` s for the trainer to leave its loop: the view then
        says 'stopped at iteration N' (state "stopped"; the full validation follows), else "stopping"."""
        self.stop.set()
        self.stop.seen.wait(wait)
        with self.lock:
            if self.view.state in ("training", "stopping"):
                self.view.state = "stopped" if self.stop.seen.is_set() else "stopping"
                self.view.eta = 0.0
        self.news.set()
        return self.snapshot()

    def finish(self):
        """Stop the run if it is still going, and wait for it to end whole (model, run card)."""
        if self.thread.is_alive():
            self.stop.set()
            self.thread.join()


def waiting_views(queue: TrainingQueue, key: str, seconds: float, stop: threading.Event,
                  show: Callable[[TrainView], None], interval: float = 1.0):
    """Generator: wait for a slot in `queue`, yielding (and `show`ing) "waiting" views with the place and
    the estimated wait about every `interval` s; returns the ticket, or None if the run left the queue
    first (`stop` set, or `queue.cancel_key(key)`). Closing it while it waits leaves the queue too."""
    turn = queue.turn(key, seconds, interval=interval)
    try:
        while True:
            try:
                waiting = next(turn)
            except StopIteration as granted:
                return granted.value
            if stop.is_set():
                return None  # turn.close() below leaves the queue
            view = TrainView(state="waiting", message=waiting_message(waiting))
            show(view)
            yield view
    except Cancelled:
        return None
    finally:
        turn.close()
