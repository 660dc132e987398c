"""The training queue: slots in order, each waiter's place and estimated wait, leaving the queue."""

import threading
import time

import pytest

from minigpt.training_queue import Cancelled, TrainingQueue, Waiting


def test_first_runs_at_once_the_others_wait_in_order_with_their_place_and_eta():
    q = TrainingQueue(slots=1)
    a = q.join("a", 20)
    b, c, d = q.join("b", 30), q.join("c", 10), q.join("d", 5)
    assert q.wait(a, 0) and not q.wait(b, 0)
    now = a.started + 5  # a has run 5 of its 20 s
    assert [q.place(t) for t in (a, b, c, d)] == [0, 1, 2, 3]
    assert [q.eta(t, now) for t in (b, c, d)] == pytest.approx([15, 45, 55])
    q.release(a)
    assert q.wait(b, 0) and q.place(c) == 1 and q.place(d) == 2
    assert q.snapshot() == {"slots": 1, "running": ["b"], "waiting": ["c", "d"]}


def test_two_slots_spread_the_wait():
    q = TrainingQueue(slots=2)
    a, b = q.join("a", 10), q.join("b", 40)
    c, d, e = q.join("c", 10), q.join("d", 10), q.join("e", 10)
    now = max(a.started, b.started)
    assert q.wait(a, 0) and q.wait(b, 0)
    assert q.eta(c, now) == pytest.approx(10, abs=0.1)   # a's slot frees first
    assert q.eta(d, now) == pytest.approx(20, abs=0.1)   # then c ends in that slot
    assert q.eta(e, now) == pytest.approx(30, abs=0.1)


def test_a_waiter_who_leaves_never_runs_and_the_rest_move_up():
    q = TrainingQueue(slots=1)
    a, b, c = q.join("a", 10), q.join("b", 10), q.join("c", 10)
    assert q.cancel_key("b") == 1
    with pytest.raises(Cancelled):
        q.wait(b, 0)
    assert q.place(c) == 1
    q.release(a)
    assert q.wait(c, 0) and b.started is None


def test_closing_turn_while_waiting_leaves_the_queue():
    q = TrainingQueue(slots=1)
    first = q.join("first", 60)
    waiter = q.turn("tab", 20, interval=0.01)
    status = next(waiter)
    assert isinstance(status, Waiting) and status.place == 1 and status.waiting == 1 and status.running == 1
    assert 0 < status.eta_s <= 60
    waiter.close()  # the tab closed: Gradio closes the streamed handler at its yield
    assert q.snapshot()["waiting"] == []
    q.release(first)
    assert q.snapshot()["running"] == []  # nobody took the slot: the closed tab's job never ran


def test_turn_returns_the_ticket_when_the_slot_comes_and_release_hands_it_on():
    q = TrainingQueue(slots=1)
    first = q.join("first", 1)
    got, seen = [], []

    def waiter():
        gen = q.turn("second", 1, interval=0.01)
        try:
            while True:
                seen.append(next(gen))
        except StopIteration as done:
            got.append(done.value)
    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    assert not got and seen and seen[-1].place == 1
    q.release(first)
    t.join(5)
    assert got and got[0].key == "second" and q.snapshot()["running"] == ["second"]
    q.release(got[0])
    q.release(got[0])  # idempotent
    assert q.snapshot() == {"slots": 1, "running": [], "waiting": []}


def test_many_threads_never_exceed_the_slots():
    q = TrainingQueue(slots=2)
    active, peak, lock = [0], [0], threading.Lock()

    def job(i):
        ticket = q.join(f"s{i}", 0.01)
        q.wait(ticket)
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.005)
        with lock:
            active[0] -= 1
        q.release(ticket)
    threads = [threading.Thread(target=job, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 2 and q.snapshot() == {"slots": 2, "running": [], "waiting": []}


def test_needs_a_slot():
    with pytest.raises(ValueError, match="at least one slot"):
        TrainingQueue(0)


def test_lower_thread_priority_applies_to_the_calling_thread_only():
    import os

    from minigpt.training_queue import lower_thread_priority
    seen = {}

    def trainer():
        seen["applied"] = lower_thread_priority(10)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=trainer)
    t.start()
    t.join()
    assert seen["applied"] and seen["nice"] >= 10
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # this thread is unchanged


def test_waiting_message_names_the_place_and_the_wait():
    from minigpt.training_queue import waiting_message
    assert waiting_message(Waiting(place=1, waiting=3, eta_s=12.4, running=1)) == (
        "Waiting to train: place 1 of 3 in the queue (you are next, 1 running); it should start in about 12 s.")
    assert "2 runs ahead of yours" in waiting_message(Waiting(place=3, waiting=3, eta_s=70, running=1))
    assert "about 1 min 10 s" in waiting_message(Waiting(place=3, waiting=3, eta_s=70, running=1))
