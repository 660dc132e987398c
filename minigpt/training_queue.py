"""The training queue: `slots` runs at a time, the others wait in order, each knowing its place and wait.

The page's Start joins the queue with the run's expected length (its time budget, or its steps
times the measured step time) and streams its place and the estimated wait while it waits:

    ticket = yield from queue.turn(session_key, expected_seconds)   # yields Waiting(place, waiting, eta_s)
    try:
        ...train...
    finally:
        queue.release(ticket)

A waiter that goes away leaves the queue and its job never runs: closing the `turn` generator (the
browser tab closed or Stop pressed, so Gradio closes the streamed handler) or `cancel_key(key)` (the
session was dropped) removes it, and the ones behind move up. The wait is estimated from the
running jobs' expected ends and the expected lengths of the jobs ahead, spread over the slots.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from dataclasses import dataclass, field


class Cancelled(Exception):
    """The ticket left the queue before its turn (its session was dropped)."""


@dataclass
class Ticket:
    key: str                      # the session's key
    seconds: float                # the expected length of the run
    joined: float = field(default_factory=time.monotonic)
    started: float | None = None  # when it got a slot
    cancelled: bool = False
    n: int = 0                    # arrival order


@dataclass
class Waiting:
    place: int            # 1 = next to start
    waiting: int          # how many wait in all
    eta_s: float          # estimated seconds until this one starts
    running: int          # runs going on now


class TrainingQueue:
    """Thread-safe FIFO of training jobs with `slots` running at once."""

    def __init__(self, slots: int = 1):
        if slots < 1:
            raise ValueError(f"the training queue needs at least one slot, got {slots}")
        self.slots = slots
        self._cv = threading.Condition()
        self._waiting: list[Ticket] = []
        self._running: list[Ticket] = []
        self._count = itertools.count()

    # -- joining, waiting, leaving --

    def join(self, key: str, seconds: float) -> Ticket:
        """A ticket at the end of the queue (it runs at once if a slot is free and nobody waits)."""
        t = Ticket(key=key, seconds=max(float(seconds), 0.0), n=next(self._count))
        with self._cv:
            self._waiting.append(t)
            self._grant()
        return t

    def _grant(self):
        """Move waiters into free slots, in order (caller holds the lock)."""
        while self._waiting and len(self._running) < self.slots:
            t = self._waiting.pop(0)
            t.started = time.monotonic()
            self._running.append(t)
            self._cv.notify_all()

    def wait(self, ticket: Ticket, timeout: float | None = None) -> bool:
        """True once the ticket has a slot; False if `timeout` passed first; Cancelled if it was removed."""
        with self._cv:
            self._cv.wait_for(lambda: ticket.started is not None or ticket.cancelled, timeout)
            if ticket.cancelled:
                raise Cancelled(f"the training job of {ticket.key} left the queue")
            return ticket.started is not None

    def release(self, ticket: Ticket) -> None:
        """The run is over, or the waiter left: free its slot or its place. Idempotent."""
        with self._cv:
            if ticket in self._running:
                self._running.remove(ticket)
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
                ticket.cancelled = True
            self._grant()
            self._cv.notify_all()

    def cancel_key(self, key: str) -> int:
        """Remove every waiting ticket of `key` (a closed tab); running ones are stopped by their owner."""
        with self._cv:
            gone = [t for t in self._waiting if t.key == key]
            for t in gone:
                self._waiting.remove(t)
                t.cancelled = True
            self._grant()
            self._cv.notify_all()
        return len(gone)

    # -- what a waiter sees --

    def place(self, ticket: Ticket) -> int:
        """0 while running (or gone), else the 1-based place among the waiters."""
        with self._cv:
            return self._waiting.index(ticket) + 1 if ticket in self._waiting else 0

    def eta(self, ticket: Ticket, now: float | None = None) -> float:
        """Estimated seconds until `ticket` starts (0 if running): the running jobs' expected ends, then
        each job ahead taking the first slot to come free."""
        now = time.monotonic() if now is None else now
        with self._cv:
            if ticket not in self._waiting:
                return 0.0
            frees = [max(0.0, r.started + r.seconds - now) for r in self._running]
            frees += [0.0] * (self.slots - len(frees))
            heapq.heapify(frees)
            for ahead in self._waiting[: self._waiting.index(ticket)]:
                heapq.heappush(frees, heapq.heappop(frees) + ahead.seconds)
            return frees[0]

    def status(self, ticket: Ticket) -> Waiting:
        with self._cv:
            return Waiting(place=self.place(ticket), waiting=len(self._waiting), eta_s=round(self.eta(ticket), 1),
                           running=len(self._running))

    def snapshot(self) -> dict:
        with self._cv:
            return {"slots": self.slots, "running": [t.key for t in self._running],
                    "waiting": [t.key for t in self._waiting]}

    def turn(self, key: str, seconds: float, interval: float = 1.0):
        """Generator: join, yield Waiting every `interval` s until a slot is ours, return the ticket.

        Closing the generator while it waits (GeneratorExit at the yield) leaves the queue. Raises
        Cancelled if the ticket was removed by cancel_key."""
        ticket = self.join(key, seconds)
        granted = False
        try:
            while not self.wait(ticket, timeout=0):
                yield self.status(ticket)
                self.wait(ticket, timeout=interval)
            granted = True
            return ticket
        finally:
            if not granted:
                self.release(ticket)


def lower_thread_priority(nice: int = 10) -> bool:
    """Give the calling thread (and the torch worker threads it starts from now on) a lower CPU priority,
    so a training run takes the cores only when the interactive calls leave them free. Linux: per-thread
    niceness; elsewhere, or when not permitted, nothing changes. True if it was applied."""
    if not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), nice))
        return True
    except OSError:
        return False


def waiting_message(w: Waiting) -> str:
    """What a learner waiting to train reads: their place, how many wait, the estimated wait."""
    secs = int(round(w.eta_s))
    wait = f"about {secs // 60} min {secs % 60:02d} s" if secs >= 60 else f"about {secs} s"
    ahead = w.place - 1
    who = "you are next" if ahead == 0 else f"{ahead} {'run' if ahead == 1 else 'runs'} ahead of yours"
    return (f"Waiting to train: place {w.place} of {w.waiting} in the queue ({who}, {w.running} running); "
            f"it should start in {wait}.")
