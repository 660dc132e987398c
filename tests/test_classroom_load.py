"""A classroom of 30 against `python app.py` on 127.0.0.1 (issue 16's measurement, kept as a test).

30 gradio_client sessions start at once. Ten of them press Start (/train, a 5 s budget, each with
its own seed) against MINIGPT_MAX_TRAINING_JOBS=1, so nine wait in the training queue. Meanwhile
every session runs the interactive script ROUNDS times: model info, estimate, tokenizer, a 4-way
Compare of 100 tokens, the next-token view and attention. At the end each session asks for its
model: every trainer must have its own (its seed, its iterations), every other session the shipped
one. Reported: p50 / p95 per endpoint, errors, peak server RSS, the training queue's waits
(each trainer's first "place N of M");
written to test-output/classroom-report.json. Run it alone with `python tests/test_classroom_load.py`
(the test runs exactly that, in a process of its own).
The class arrives once one page has loaded the model (`warm_up_s` in the report says how long the
server took to be warm: it answers HTTP 200 first and loads torch and the model in the background).

The latency goals (cheap calls p95 <= 1 s, Compare <= 10 s, attention <= 5 s) depend on the
machine and whatever else runs on it, so the test asserts them only when CLASSROOM_STRICT=1;
errors == 0, isolation and peak RSS <= 2 GB are always asserted.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT  # noqa: E402
from loadkit import app_server, client, cpu_seconds, figures, reported, rss_mb, run_all, timed  # noqa: E402

SESSIONS = 30
TRAINERS = 10
ROUNDS = 1  # one interactive script per session while the ten runs queue (two: ~20 s more of the suite)
TRAIN_SECONDS = 5  # the runs queue one after another: 10 of them set most of the test's time (10 s each: 140-195 s of a 15-16 min suite)
PEAK_RSS_LIMIT_MB = 2048
REPORT = ROOT / "test-output" / "classroom-report.json"
PLACE = re.compile(r"place \d+ of \d+")  # in the status of a run waiting for its turn
CHEAP_CALLS = ("model_info", "estimate", "tokenize")
GOALS_P95_S = {"model_info": 1.0, "estimate": 1.0, "tokenize": 1.0, "compare": 10.0, "attention": 5.0}

TRAIN = dict(data="shakespeare", text="", upload=None, tokenizer="char", model="gpt", n_embd=64, n_head=4, n_layer=2,
             block_size=64, dropout=0.0, batch_size=16, lr=3e-3, budget="seconds", amount=TRAIN_SECONDS,
             eval_interval=100, seed=1)
COMPARE = dict(prompt="ROMEO:", tokens=100, seed=3, strategies=["greedy", "multinomial", "low temperature",
                                                                  "high temperature"],
               low_t=0.5, high_t=2.0, top_k=10, top_p=0.9, colour=True, use_cache=True)


def interactive(i: int, r: int):
    """(name, kwargs, api_name, check) of one round of session i's interactive script."""
    return [
        ("model_info", {}, "/model_info", lambda x: x[0]["params"] > 0),
        ("estimate", {**TRAIN, "seed": 100 + i}, "/estimate", lambda x: "parameters" in str(x)),
        ("tokenize", dict(text=f"Session {i}, round {r}: to be, or not to be"), "/tokenize",
         lambda x: x[1]["char"]["count"] > 0),
        ("compare", {**COMPARE, "seed": 1000 * r + i}, "/compare_sampling",
         lambda x: len(x[1]) == 4 and all(c["tokens"] == 100 for c in x[1])),
        ("next_token", dict(column="greedy", step=5), "/next_token_distribution", lambda x: "rank" in x[1]),
        ("attention", dict(text="ROMEO: what light", layer=0, head="all"), "/attention",
         lambda x: x[1].startswith("17 tokens")),
    ]


def classroom(url: str) -> dict:
    results, trains, finals, queue_seen = [], {}, {}, {}
    lock = threading.Lock()
    start = threading.Barrier(SESSIONS)

    t_room = time.monotonic()

    def record(name, secs, err):  # with when it ended, for a look at when the slow calls happen
        with lock:
            results.append((name, secs, err, time.monotonic() - t_room))

    def connect(i):
        t0 = time.monotonic()
        for attempt in range(3):  # opening the page: counted as an endpoint of its own
            try:
                c = client(url)
                record("connect", time.monotonic() - t0, None)
                return c
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
        record("connect", time.monotonic() - t0, err)
        return None

    def session_main(i):
        try:
            start.wait(timeout=300)
        except threading.BrokenBarrierError:
            pass
        c = connect(i)
        if c is None:
            return
        try:
            job, t_train = None, time.monotonic()
            if i < TRAINERS:
                job = c.submit(**{**TRAIN, "seed": 100 + i}, api_name="/train")
            for r in range(ROUNDS):
                for name, kwargs, api, check in interactive(i, r):
                    timed(record, name, lambda: c.predict(**kwargs, api_name=api), check)
            if job is not None:
                try:
                    out = job.result(timeout=900)
                    card = out[3]
                    places = [m.group(0) for o in job.outputs() for m in [PLACE.search(str(o[1]))] if m]
                    with lock:
                        queue_seen[i] = {"updates_waiting": len(places), "first": places[0] if places else None}
                    ok = card.get("seed") == 100 + i and card.get("iters", 0) > 0
                    record("train", time.monotonic() - t_train, None if ok else f"unexpected card {card}")
                    trains[i] = card
                except Exception as e:
                    record("train", time.monotonic() - t_train, f"{type(e).__name__}: {e}")
            t0 = time.monotonic()
            try:
                finals[i] = c.predict(api_name="/model_info")[0]
                record("model_info", time.monotonic() - t0, None)
            except Exception as e:
                record("model_info", time.monotonic() - t0, f"{type(e).__name__}: {e}")
        finally:
            c.close()

    run_all(session_main, SESSIONS, timeout=1200, what="a session")

    isolation = []
    for i in range(SESSIONS):
        info = finals.get(i)
        if info is None:
            isolation.append(f"session {i}: no final model info")
        elif i < TRAINERS:
            card = info.get("training", {})
            if info["source"].startswith("shipped") or card.get("seed") != 100 + i:
                isolation.append(f"trainer {i} ended with {info['source']} seed {card.get('seed')}")
        elif not info["source"].startswith("shipped"):
            isolation.append(f"session {i} (no training) sees {info['source']}")
    slowest = sorted(results, key=lambda r: -r[1])
    cheap = [r for r in slowest if r[0] in CHEAP_CALLS][:5]
    return {"results": results, "slowest_cheap": [(n, round(s, 2), round(t, 1)) for n, s, _, t in cheap],
            "isolation_problems": isolation,
            "train_iters": {i: trains[i].get("iters") for i in sorted(trains)},
            "queue_seen": {i: queue_seen[i] for i in sorted(queue_seen)}}


def warmed_up(url: str) -> float:
    """Seconds until the page's model answers: the server answers HTTP 200 before torch and the shipped
    model are loaded (they load in the background), and a class arrives after the teacher's page."""
    t0 = time.monotonic()
    c = client(url)
    try:
        c.predict(api_name="/model_info")
    finally:
        c.close()
    return time.monotonic() - t0


def load_test() -> dict:
    log = REPORT.with_name("classroom-server.log")
    with app_server(log, {"MINIGPT_MAX_TRAINING_JOBS": "1"}) as (server, url):
        warm_up = warmed_up(url)  # the teacher opens the page first; the class comes after
        idle = rss_mb(server.pid)
        t0, server_cpu0, client_cpu0 = time.monotonic(), cpu_seconds(server.pid), cpu_seconds(os.getpid())
        room = classroom(url)
        seconds = time.monotonic() - t0
        # Where the machine's CPU went: the server, and the 30 clients (this process: on one machine they
        # share its cores, unlike a real class whose browsers run elsewhere).
        server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu0, cpu_seconds(os.getpid()) - client_cpu0
        peak = rss_mb(server.pid, "VmHWM")
        alive = server.poll() is None
    return {"sessions": SESSIONS, "trainers": TRAINERS, "train_budget_s": TRAIN_SECONDS, "rounds": ROUNDS,
            **figures(room["results"]), "slowest_cheap_calls": room["slowest_cheap"],
            "isolation_problems": room["isolation_problems"], "train_iters": room["train_iters"],
            "queue_seen": room["queue_seen"],
            "trainers_shown_their_place": sum(1 for q in room["queue_seen"].values() if q["first"]),
            "seconds": round(seconds, 1), "server_cpu_s": round(server_cpu, 1), "client_cpu_s": round(client_cpu, 1),
            "server_alive": alive, "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "rss_idle_mb": round(idle), "rss_peak_mb": round(peak), "warm_up_s": round(warm_up, 2)}


@pytest.mark.slow
def test_a_classroom_of_thirty():
    # The class in a process of its own: the suite's process also holds the in-process app server of
    # other tests and their leftover clients, whose threads took ~10 s of CPU from the class's clients.
    REPORT.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, __file__], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(REPORT.read_text())
    assert not report["isolation_problems"], report["isolation_problems"]
    assert len(report["train_iters"]) == TRAINERS
    # One runs at a time and all ten start together: at least the last eight wait and see their place.
    assert report["trainers_shown_their_place"] >= TRAINERS - 2, report["queue_seen"]
    assert report["rss_peak_mb"] <= PEAK_RSS_LIMIT_MB, report
    if os.environ.get("CLASSROOM_STRICT") == "1":
        slow = {k: v for k, v in GOALS_P95_S.items() if report["p95_s"].get(k, 0) > v}
        assert not slow, f"p95 over the goals {slow}: {report['p95_s']}"


if __name__ == "__main__":
    reported(load_test, REPORT)
