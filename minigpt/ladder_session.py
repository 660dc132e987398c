"""The ladder (minigpt/ladder.py) as one user's training job in the playground, seen as `LadderView`s.

`ladder(session, settings)` runs `run_ladder()` in a thread of its own (as `LiveTraining` runs
`train()`) and yields throttled snapshots: the rungs finished so far (each `RungDone.to_dict()`),
the rung training now with its curve so far, and the state. It is one training job of the
session: it holds the session's training lock (so the Train tab cannot start meanwhile, and the
other way round), clears and obeys the session's stop flag (the Train tab's Stop and
`stop_soon` both stop it), waits its turn in the playground's training queue when there is one,
and runs under the server's limits (the whole ladder within one run's time limit). The session's
current model is left as it was. Core module: imports minigpt's core only (never gradio or matplotlib).
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import asdict, dataclass, field

from .data import split_ids
from .events import Eval, Start, Step
from .ladder import RUNGS, LadderConfig, LadderDone, RungDone, RungProgress, RungStarted, rung_config, run_ladder
from .train_spec import SHAKESPEARE
from .training_queue import waiting_message
from .training_view import fold_events


@dataclass
class LadderView:
    """A snapshot of a ladder run for the page (plain data, copied: safe to hand to another thread)."""
    state: str = "idle"        # idle | waiting | training | stopping | stopped (full validation left) | done
    settings: dict = field(default_factory=dict)
    rungs: int = len(RUNGS)
    rung: int = 0              # the rung training now (1-based), 0 before the first
    started: dict = field(default_factory=dict)  # rung -> RungStarted as a dict (name, idea, params, ...)
    done: list = field(default_factory=list)     # RungDone.to_dict() of each finished rung
    live: dict | None = None   # the rung training now: rung, name, params, iter, max_iters, loss, tokens_per_s, curve
    message: str = ""
    elapsed: float = 0.0
    seconds: float = 0.0       # the whole ladder's wall time (when done)
    cpu_seconds: float = 0.0
    stopped: bool = False
    device: str = ""
    dtype: str = ""

    def rung_dicts(self) -> list[dict]:
        """The finished rungs and the one training now (its curve so far), for the figures."""
        return list(self.done) + ([self.live] if self.live and self.live.get("curve") else [])


class LiveLadder:
    """`run_ladder(...)` in a thread of its own, folded into a LadderView."""

    def __init__(self, settings: LadderConfig, tokenizer, splits, stop: threading.Event, limits, threads: int,
                 name: str = "minigpt-ladder"):
        self.settings, self.tokenizer, self.splits = settings, tokenizer, splits
        self.stop, self.limits, self.threads = stop, limits, threads
        self.view = LadderView(state="training", settings=asdict(settings))
        self.lock, self.news, self.finished = threading.Lock(), threading.Event(), threading.Event()
        self.failure: list[BaseException] = []
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> "LiveLadder":
        self.thread.start()
        return self

    def _work(self):
        events = run_ladder(self.settings, self.tokenizer, self.splits, stop=self.stop, limits=self.limits)
        fold_events(self, events, news=lambda ev: not isinstance(ev, RungProgress))  # a rung started or finished

    def _apply(self, ev):
        view = self.view
        view.elapsed = time.perf_counter() - self.t0
        if isinstance(ev, RungStarted):
            view.rung, view.rungs = ev.rung, ev.rungs
            view.started[ev.rung] = {k: v for k, v in asdict(ev).items() if k != "config"}
            view.live = {"rung": ev.rung, "name": ev.name, "params": ev.params, "iter": 0, "max_iters": 0, "loss": None,
                         "tokens_per_s": 0.0, "curve": []}
        elif isinstance(ev, RungProgress) and view.live is not None:
            e = ev.event
            if isinstance(e, Start):
                view.device, view.dtype = e.device, e.dtype
                view.live["max_iters"] = e.max_iters
            elif isinstance(e, Step):
                view.live.update(iter=e.iter, loss=e.loss, tokens_per_s=e.tokens_per_s, progress=e.progress)
            elif isinstance(e, Eval):
                view.live["curve"].append([e.iter, round(e.elapsed, 2), round(e.train_loss, 4), round(e.val_loss, 4)])
        elif isinstance(ev, RungDone):
            view.done.append(ev.to_dict())
            view.live = None
        elif isinstance(ev, LadderDone):
            view.state = "done"
            view.seconds, view.cpu_seconds, view.stopped = ev.seconds, ev.cpu_seconds, ev.stopped
            view.device, view.dtype = ev.device or view.device, ev.dtype or view.dtype

    def snapshot(self) -> LadderView:
        with self.lock:
            return copy.deepcopy(self.view)

    def views(self, interval: float = 0.5):
        """Snapshots at most every `interval` s (at once when a rung starts or ends), then the final one."""
        interval = max(interval, 0.05)
        while not self.finished.is_set():
            self.news.wait(interval)
            self.news.clear()
            if self.finished.is_set():
                break
            yield self.snapshot()
        self.thread.join()
        if self.failure:
            raise self.failure[0]
        yield self.snapshot()


class LadderState:
    """A session's ladder: the run going on (if any) and the last view."""

    def __init__(self):
        self.live: LiveLadder | None = None
        self.view = LadderView()


def state_of(session) -> LadderState:
    if session.ladder is None:
        session.ladder = LadderState()
    return session.ladder


def check(session, settings: LadderConfig):
    """Validate the settings and every rung's config against the limits; (tokenizer, splits) of the text."""
    limits = session.pg.limits
    settings.validate(limits)
    tok, ids, _ = session.pg.text_and_ids(SHAKESPEARE, "", "char")
    for i in range(1, len(RUNGS) + 1):
        rung_config(i, tok.vocab_size, settings.n_embd, settings.block_size, settings.norm).validate(limits)
    return tok, split_ids(ids)


def expected_seconds(session, settings: LadderConfig, vocab_size: int) -> float:
    """The ladder's predicted length, for the training queue's estimated waits."""
    if settings.seconds_per_rung is not None:
        return settings.seconds_per_rung * len(RUNGS)
    batch = settings.train_config(session.pg.limits).batch_size
    total = sum(session.pg.speed.step_seconds(rung_config(i, vocab_size, settings.n_embd, settings.block_size,
                                                          settings.norm), batch) for i in range(1, len(RUNGS) + 1))
    return min(total * settings.iters_per_rung, session.pg.limits.max_train_seconds)


def ladder(session, settings: LadderConfig, interval: float = 0.5):
    """Run the ladder as this session's one training job, yielding a LadderView about every `interval` s.

    Bad settings raise ValueError before anything changes. If the consumer stops early (the
    browser's Stop cancels the request), the ladder is stopped and ends in the background; the
    session counts as training until it has.
    """
    state = state_of(session)
    tok, splits = check(session, settings)
    if not session._train_lock.acquire(blocking=False):  # the Train tab's lock: one training job a session
        raise ValueError("this session is already training: stop it first")
    session._idle.clear()
    session.stop_event.clear()
    ticket = None
    try:
        # Hook for the playground's training queue (minigpt/training_queue.py): the ladder waits its turn
        # like any training run, streaming its place; leaving (Stop, the tab closed) means it never starts.
        queue = getattr(session.pg, "training_queue", None)
        if queue is not None:
            turn = queue.turn(session.key, expected_seconds(session, settings, tok.vocab_size), interval=interval)
            try:
                while True:
                    try:
                        w = next(turn)
                    except StopIteration as granted:
                        ticket = granted.value
                        break
                    if session.stop_event.is_set():
                        state.view = LadderView(state="idle", message="Left the training queue: the ladder did not run.")
                        break
                    state.view = LadderView(state="waiting", settings=asdict(settings), message=waiting_message(w))
                    yield state.view
            finally:
                turn.close()
        live = None
        if queue is None or ticket is not None:
            live = state.live = LiveLadder(settings, tok, splits, session.stop_event, session.pg.limits,
                                           session.pg.threads, name=f"minigpt-ladder-{session.key[:8]}").start()
    except BaseException:
        session._release(ticket)
        raise
    if live is None:  # left the queue before its turn: nothing ran
        session._release(None)
        yield state.view
        return
    closed_early = True
    try:
        for view in live.views(interval):
            state.view = view
            yield view
        closed_early = False
    finally:
        if closed_early and live.thread.is_alive():
            session.stop_event.set()
            threading.Thread(target=_wrap_up, args=(session, state, live, ticket), daemon=True,
                             name=f"minigpt-ladder-wrap-{session.key[:8]}").start()
        else:
            _wrap_up(session, state, live, ticket)


def _wrap_up(session, state: LadderState, live: LiveLadder, ticket):
    try:
        live.thread.join()
        state.view = live.snapshot()
        state.live = None
    finally:
        session._release(ticket)


def stop_soon(session, wait: float = 0.5) -> LadderView:
    """Stop this session's ladder (if one runs) and answer within about `wait` s: the view says which
    rung and step it stopped at; that rung's full validation and sample follow (see `stop`)."""
    state = state_of(session)
    live = state.live
    if live is None:
        if state.view.state == "waiting":
            session.stop_event.set()
        return state.view
    session.stop_event.set()
    session.stop_event.seen.wait(wait)
    with live.lock:
        if live.view.state == "training":
            live.view.state = "stopped" if session.stop_event.seen.is_set() else "stopping"
            live.view.message = _stop_message(live.view)
    live.news.set()
    state.view = live.snapshot()
    return state.view


def stop(session, wait: float = 120.0) -> LadderView:
    """Wait (up to `wait` s) for a stopped ladder to end; its last rung's numbers are then in."""
    session._idle.wait(wait)
    return state_of(session).view


def _stop_message(view: LadderView) -> str:
    where = f"rung {view.rung} ({view.live['name']}) at step {view.live['iter']}" if view.live else f"rung {view.rung}"
    return f"Stopped in {where}: measuring its full validation loss, then the ladder ends."
