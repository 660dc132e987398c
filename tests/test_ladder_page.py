"""The Build it up tab through its API (gradio_client against the app in-process) and its engine
(minigpt/ladder_session.py) in a Playground: the ladder as one training job, Stop, the queue hook,
and averaging → attention."""

import re
import threading
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from conftest import wait_for

TINY = dict(iters_per_rung=10, norm="rms", n_embd=16, block_size=16, seed=1)


@pytest.fixture
def client(app_server, tmp_path):
    c = Client(app_server[1], verbose=False, download_files=str(tmp_path))
    yield c
    c.close()


def rows(table_html: str) -> list[str]:
    return re.findall(r"<tr[^>]*>(.*?)</tr>", table_html, re.S)[1:]  # without the header


def test_the_tab_and_its_endpoints_exist_and_idle_shows_the_measured_ladder(client):
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/ladder", "/ladder_stop", "/averaging"} <= named
    status, curves, bars, table, samples = client.predict(api_name="/ladder_stop")  # nothing runs: the measured one
    assert "Measured</b> on" in status and "python -m minigpt ladder" in status and "2026-11-29" in status
    assert len(rows(table)) == 8 and "does not help at this budget" in table and "2.631" in table
    assert samples.count("class=\"mg-card\"") == 8


def test_averaging_three_ways_agree_and_the_model_attends(client):
    avg_plot, note, attn_plot, numbers = client.predict(api_name="/averaging")  # defaults: "First Citizen"
    assert avg_plot["type"] == "matplotlib" and attn_plot["type"] == "matplotlib"
    assert numbers["max_diff"] <= 1e-6 and numbers["diff_weights"] <= 1e-6 and numbers["attention"]
    assert len(numbers["tokens"]) == len("First Citizen") and "13 tokens" in note
    numbers = client.predict("ROMEO:\nBut soft", 3, 2, api_name="/averaging")[3]
    assert numbers["max_diff"] <= 1e-6 and len(numbers["tokens"]) == 15
    with pytest.raises(AppError, match="layer must be between 0 and 3"):
        client.predict("ROMEO", 4, 0, api_name="/averaging")


def test_a_tiny_ladder_streams_eight_rungs_and_keeps_the_model(client):
    job = client.submit(**TINY, api_name="/ladder")
    assert wait_for(lambda: len(job.outputs()) >= 1, timeout=120)
    # One training job: the Train tab's Start waits in the same pool until the ladder has finished.
    train = client.submit(n_embd=32, n_head=2, n_layer=1, budget="iterations", amount=5, api_name="/train")
    time.sleep(1.0)
    assert not job.done() and train.status().code.name == "IN_QUEUE" and not train.outputs()
    status, curves, bars, table, samples = job.result(timeout=900)
    outputs = job.outputs()
    assert len(outputs) >= 3 and any("Live run in this session</b>: rung" in o[0] for o in outputs)
    assert "finished after 8 of 8 rungs" in status and "RMSNorm in rungs 7–8" in status
    assert len(rows(table)) == 8 and len(re.findall(r"<b>\d\.\d{3}</b>", table)) == 8
    assert "RMSNorm" in table and samples.count("class=\"mg-card\"") == 8
    assert curves["type"] == "matplotlib" and bars["type"] == "matplotlib"
    assert "Finished" in train.result(timeout=300)[1]  # then it trains


def test_the_ladder_needs_no_arguments_and_stops_at_once(client):
    job = client.submit(api_name="/ladder")  # the page's defaults: 300 steps a rung, 128 wide
    assert wait_for(lambda: any("step <b>" in o[0] for o in job.outputs()), timeout=180)
    t0 = time.monotonic()
    stop = client.submit(api_name="/ladder_stop")
    assert wait_for(lambda: len(stop.outputs()) >= 1, timeout=10, every=0.01)
    assert time.monotonic() - t0 < 3
    assert "Stopped in rung 1 (bigram)" in stop.outputs()[0][0]
    status, curves, bars, table, samples = stop.result(timeout=180)
    assert "stopped after 1 of 8 rungs" in status
    assert len(re.findall(r"<b>\d\.\d{3}</b>", table)) == 1 and samples.count("class=\"mg-card\"") == 1
    assert wait_for(job.done, timeout=60)
    # The session is free again: a short training run starts.
    last = client.predict(n_embd=32, n_head=2, n_layer=1, budget="iterations", amount=5, api_name="/train")
    assert "Finished" in last[1]


# ---- the engine, in a Playground of its own -----------------------------------------------------

def test_the_ladder_waits_its_turn_in_the_training_queue_and_leaves_it_on_stop():
    from minigpt.ladder import LadderConfig
    from minigpt.ladder_session import ladder
    from minigpt.playground import Playground
    from minigpt.training_queue import TrainingQueue
    pg = Playground()
    pg.training_queue = TrainingQueue(1)  # the hook: a playground with a queue (minigpt/training_queue.py)
    other = pg.training_queue.join("someone-else", 60)  # holds the only slot
    s = pg.session("me")
    views = ladder(s, LadderConfig(iters_per_rung=5, n_embd=16, block_size=16), interval=0.05)
    first = next(views)
    assert first.state == "waiting" and "place 1 of 1" in first.message and s.training
    threading.Timer(0.2, s.stop_event.set).start()
    rest = list(views)
    assert rest[-1].state == "idle" and "did not run" in rest[-1].message
    assert not s.training and pg.training_queue.snapshot()["waiting"] == []
    pg.training_queue.release(other)


def test_bad_ladder_settings_change_nothing():
    from minigpt.ladder import LadderConfig
    from minigpt.ladder_session import ladder
    from minigpt.playground import Playground
    s = Playground().session("me")
    for bad, words in ((dict(n_embd=18), "divisible"), (dict(norm="group"), "norm must be one of"),
                       (dict(iters_per_rung=0), "iters_per_rung must be between")):
        with pytest.raises(ValueError, match=words):
            next(ladder(s, LadderConfig(**{**dict(iters_per_rung=5, n_embd=16, block_size=16), **bad})))
        assert not s.training and s.ladder.view.state == "idle"


def test_the_ladder_is_the_sessions_one_training_job_and_keeps_its_model():
    from minigpt.ladder import LadderConfig
    from minigpt.ladder_session import ladder
    from minigpt.playground import Playground
    from minigpt.train_spec import TrainSpec
    s = Playground().session("me")
    views = ladder(s, LadderConfig(iters_per_rung=100_000, n_embd=16, block_size=16), interval=0.05)
    assert next(views).state == "training" and s.training
    with pytest.raises(ValueError, match="already training"):
        next(s.train(TrainSpec(n_embd=16, n_head=2, n_layer=1, budget="iterations", amount=5)))
    assert wait_for(lambda: (s.ladder.live.snapshot().live or {}).get("iter", 0) > 0, timeout=120)
    s.stop_soon()  # the Train tab's Stop stops the ladder too: the session's one stop flag
    last = list(views)[-1]
    assert last.state == "done" and last.stopped and len(last.done) == 1 and last.done[0]["reason"] == "stopped"
    assert not s.training and s.current().shared  # the shipped model, as before
