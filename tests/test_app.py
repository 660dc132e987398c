"""The page's API, end to end: the app launched in-process on 127.0.0.1 and driven with gradio_client."""

import re
import threading
import time
from html import unescape
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from conftest import wait_for

TINY = dict(data="shakespeare", text="", upload=None, tokenizer="char", model="gpt", n_embd=32, n_head=2, n_layer=2,
            block_size=32, dropout=0.0, batch_size=16, lr=3e-3, budget="seconds", amount=60, eval_interval=10, seed=1)
COMPARE = dict(prompt="ROMEO:", tokens=40, seed=3, strategies=["greedy", "multinomial", "low temperature",
                                                                 "high temperature", "top-k", "top-p"],
               low_t=0.5, high_t=2.0, top_k=10, top_p=0.9, colour=True, use_cache=True)
ENDPOINTS = {"/train", "/stop", "/continue_training", "/reset", "/save", "/estimate", "/generate", "/compare_sampling",
             "/next_token_distribution", "/attention", "/attention_scores", "/tokenize", "/load_checkpoint",
             "/load_shipped", "/model_info"}


@pytest.fixture(scope="module")
def server(app_server):
    return app_server


@pytest.fixture
def client(server, tmp_path):
    c = Client(server[1], verbose=False, download_files=str(tmp_path))
    yield c
    c.close()


def test_every_action_has_a_named_endpoint(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert ENDPOINTS <= set(info["named_endpoints"])


def test_model_info_starts_with_the_shipped_model(client):
    info, summary, badge = client.predict(api_name="/model_info")
    assert info["source"].startswith("shipped") and info["params"] > 0 and info["device"] == "cpu"
    assert "full validation loss" in summary and "Current model" in badge


def test_estimate_refuses_impossible_combinations(client):
    html = client.predict(**{**TINY, "n_embd": 48, "n_head": 5}, api_name="/estimate")  # (Start is disabled too)
    assert "Cannot start" in html and "divisible" in html
    html = client.predict(**TINY, api_name="/estimate")
    assert "parameters" in html and "Cannot" not in html


def test_training_streams_updates_and_stops_on_request(server, client):
    app, url = server
    t0 = time.monotonic()
    job = client.submit(**TINY, api_name="/train")
    assert wait_for(lambda: len(job.outputs()) >= 4 and any(o[2] for o in job.outputs()), timeout=90)
    elapsed = time.monotonic() - t0
    # At least about one update a second while training (Start, steps, evals, samples).
    assert len(job.outputs()) >= min(4, elapsed / 2)
    t_stop = time.monotonic()
    plot, status, sample, card, badge, grad, act = client.predict(api_name="/stop")
    assert time.monotonic() - t_stop < 10
    assert "Finished" in status and "stopped" in status
    assert wait_for(lambda: job.done(), timeout=30)
    series = {row[2] for row in plot["data"]}
    assert {"train (batch)", "train", "val"} <= series
    assert sample.startswith("— sample at iteration") and card["iters"] > 0 and card["val_loss"] is not None
    assert "trained in this session" in badge
    info = client.predict(api_name="/model_info")[0]
    assert info["source"] == "trained in this session" and info["training"]["iters"] == card["iters"]
    # Another client (another browser tab) still has the shipped model.
    other = Client(url, verbose=False)
    try:
        assert other.predict(api_name="/model_info")[0]["source"].startswith("shipped")
    finally:
        other.close()
    # Continue resumes the same run; Reset goes back to the shipped model.
    last = client.predict(**{**TINY, "budget": "iterations", "amount": 20}, api_name="/continue_training")
    assert "Finished" in last[1] and last[3]["iters"] == card["iters"] + 20
    client.predict(api_name="/reset")
    assert client.predict(api_name="/model_info")[0]["source"].startswith("shipped")


def test_sampling_comparison_is_repeatable(client):
    first = client.predict(**COMPARE, api_name="/compare_sampling")
    second = client.predict(**COMPARE, api_name="/compare_sampling")
    html, summary, column, step = first
    assert [c["text"] for c in summary] == [c["text"] for c in second[1]]
    assert [c["name"] for c in summary] == ["greedy", "multinomial (T = 1)", "temperature T = 0.5",
                                            "temperature T = 2", "top-k (k = 10)", "top-p (p = 0.9)"]
    assert all(c["tokens"] == 40 and c["perplexity"] >= 1 for c in summary)
    assert "perplexity" in html and 'title="p = ' in html and column["value"] == "greedy"
    other = client.predict(**{**COMPARE, "seed": 4}, api_name="/compare_sampling")[1]
    assert other[1]["text"] != summary[1]["text"]  # multinomial depends on the seed; greedy does not
    assert other[0]["text"] == summary[0]["text"]
    plot, note = client.predict("temperature T = 2", 5, api_name="/next_token_distribution")
    assert plot["type"] == "matplotlib" and "rank" in note
    with pytest.raises(AppError, match="no column"):
        client.predict("nope", 1, api_name="/next_token_distribution")


def test_comparison_escapes_text(client):
    html = client.predict(**{**COMPARE, "prompt": "Tom & Jerry's", "tokens": 5}, api_name="/compare_sampling")[0]
    assert "Tom &amp; Jerry&#x27;s" in html and "Tom & Jerry" not in html
    with pytest.raises(AppError, match="not in the model's vocabulary"):
        client.predict(**{**COMPARE, "prompt": "<script>"}, api_name="/compare_sampling")


def test_generate_streams_and_measures_the_cache(client):
    job = client.submit("ROMEO:", 150, "temperature", 0.8, 0, 1.0, 1, True, api_name="/generate")
    text, words, plot = job.result()
    assert text.startswith("ROMEO:") and len(text) > 100 and "tokens/s" in words and "on" in words
    text2, words2, plot2 = client.predict("ROMEO:", 150, "temperature", 0.8, 0, 1.0, 1, False, api_name="/generate")
    assert text2 == text and "off" in words2 and plot2["type"] == "matplotlib"
    with pytest.raises(AppError, match="tokens must be between 1 and 2000"):  # the slider's bound (from Limits)
        client.predict("ROMEO:", 10**6, "greedy", 0.8, 0, 1.0, 1, True, api_name="/generate")
    with pytest.raises(AppError, match="strategy must be one of"):
        client.predict("ROMEO:", 5, "beam", 0.8, 0, 1.0, 1, True, api_name="/generate")


def test_attention_one_head_and_all_heads(client):
    plot, note = client.predict("ROMEO: hi", 1, "2", api_name="/attention")
    assert plot["type"] == "matplotlib" and note.startswith("9 tokens")
    plot, note = client.predict("", 0, "all", api_name="/attention")
    assert plot["type"] == "matplotlib"
    with pytest.raises(AppError, match="layer must be between"):
        client.predict("hi", 9, "all", api_name="/attention")
    plot, numbers = client.predict("ROMEO: hi there", api_name="/attention_scores")
    assert plot["type"] == "matplotlib" and "std q·k" in numbers and "15 tokens" in numbers


def test_tokenize_both_ways(client):
    html, ids = client.predict("Hello, world!", api_name="/tokenize")
    assert ids["char"]["count"] == 13 and ids["char"]["vocab_size"] == 65
    assert ids["gpt2"]["ids"] == [15496, 11, 995, 0] and ids["gpt2"]["vocab_size"] == 50257
    assert "mg-chip" in html


def test_save_and_load_a_checkpoint_and_a_bad_upload_is_refused(server, client, tmp_path):
    path = client.predict(api_name="/save")
    assert Path(path).suffix == ".safetensors" and Path(path).stat().st_size > 1000
    info, summary, badge = client.predict(handle_file(path), api_name="/load_checkpoint")
    assert info["source"].startswith("uploaded") and "uploaded" in badge
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json" + b"\x00" * 64)
    with pytest.raises(AppError, match="not a safetensors file"):
        client.predict(handle_file(str(bad)), api_name="/load_checkpoint")
    # The current model is untouched and still works.
    assert client.predict(api_name="/model_info")[0]["source"] == info["source"]
    summary = client.predict(**{**COMPARE, "tokens": 10}, api_name="/compare_sampling")[1]
    assert all(c["tokens"] == 10 for c in summary)
    assert client.predict(api_name="/load_shipped")[0]["source"].startswith("shipped")


def test_bad_training_input_is_a_message_not_a_crash(client):
    with pytest.raises(AppError, match="divisible"):
        client.predict(**{**TINY, "n_embd": 48, "n_head": 5}, api_name="/train")
    with pytest.raises(AppError, match="paste some text"):
        client.predict(**{**TINY, "data": "paste", "text": "  "}, api_name="/train")
    assert client.predict(api_name="/model_info")[0]["params"] > 0


def waiting_place(job) -> str:
    """The place a queued /train job's latest status shows ("" while it shows none)."""
    outs = job.outputs()
    m = re.search(r"place \d+ of \d+", outs[-1][1]) if outs else None
    return m.group(0) if m else ""


def test_training_is_queued_one_at_a_time_while_generation_stays_responsive(server):
    """One training job at a time: B waits, seeing its place and the estimated wait; Compare answers
    meanwhile; B's Stop leaves the queue (its run never starts) and A keeps training."""
    app, url = server
    assert app.LIMITS.max_training_jobs == 1
    queue = app.PLAYGROUND.training_queue
    a, b, c = (Client(url, verbose=False) for _ in range(3))
    try:
        job_a = a.submit(**TINY, api_name="/train")
        assert wait_for(lambda: len(job_a.outputs()) >= 1, timeout=60)
        job_b = b.submit(**{**TINY, "seed": 2}, api_name="/train")
        assert wait_for(lambda: waiting_place(job_b) == "place 1 of 1", timeout=60), job_b.outputs()
        assert "Waiting to train" in job_b.outputs()[-1][1] and "it should start in about" in job_b.outputs()[-1][1]
        assert queue.snapshot() == {"slots": 1, "running": [a.session_hash], "waiting": [b.session_hash]}
        t0 = time.monotonic()
        summary = c.predict(**{**COMPARE, "tokens": 20}, api_name="/compare_sampling")[1]
        assert len(summary) == 6 and time.monotonic() - t0 < 30
        status = b.predict(api_name="/stop")[1]  # b only waits: Stop leaves the queue, and a keeps training
        assert "Left the training queue" in status
        assert wait_for(job_b.done, timeout=30) and not job_a.done()
        assert queue.snapshot()["waiting"] == []
        assert b.predict(api_name="/model_info")[0]["source"].startswith("shipped")
        a.predict(api_name="/stop")
        assert wait_for(lambda: job_a.done(), timeout=30)
        assert wait_for(lambda: queue.snapshot()["running"] == [], timeout=30)
    finally:
        for x in (a, b, c):
            x.close()


def test_a_closed_tab_waiting_to_train_leaves_the_queue_and_its_run_never_starts(server):
    app, url = server
    queue = app.PLAYGROUND.training_queue
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    try:
        job_a = a.submit(**TINY, api_name="/train")
        assert wait_for(lambda: len(job_a.outputs()) >= 1, timeout=60)
        job_b = b.submit(**{**TINY, "seed": 2}, api_name="/train")
        assert wait_for(lambda: waiting_place(job_b) == "place 1 of 1", timeout=60), job_b.outputs()
        key_b = b.session_hash
        b.close()  # the tab closes while its run waits
        assert wait_for(lambda: queue.snapshot()["waiting"] == [] and key_b not in app.PLAYGROUND, timeout=30)
        n = len(job_a.outputs())
        assert wait_for(lambda: len(job_a.outputs()) > n, timeout=30) and not job_a.done()  # A trains on
        card = a.predict(api_name="/stop")[3]
        assert card["seed"] == 1 and card["iters"] > 0
        assert wait_for(job_a.done, timeout=30)
        # B's run never starts: the slot stays free and no trainer thread of B's appears.
        assert wait_for(lambda: queue.snapshot()["running"] == [], timeout=30)
        time.sleep(2.0)
        assert queue.snapshot() == {"slots": 1, "running": [], "waiting": []}
        assert not any(t.name == f"minigpt-train-{key_b[:8]}" for t in threading.enumerate())
        assert key_b not in app.PLAYGROUND
    finally:
        a.close()


def test_a_closed_client_frees_its_session(server):
    app, url = server
    c = Client(url, verbose=False)
    c.predict(api_name="/model_info")
    key = c.session_hash
    assert key in app.PLAYGROUND
    c.close()
    assert wait_for(lambda: key not in app.PLAYGROUND, timeout=30)


def iteration(status_html: str) -> int:
    m = re.search(r"iteration <b>([\d,]+)</b>", status_html)
    return int(m.group(1).replace(",", "")) if m else -1


def test_train_estimate_and_continue_need_no_arguments_and_stop_answers_within_a_second(server, tmp_path):
    """The page's defaults are the endpoints' defaults; Stop's first update comes at once, the
    full-validation loss as a later update of the same status."""
    app, url = server
    c = Client(url, verbose=False, download_files=str(tmp_path))
    try:
        html = c.predict(api_name="/estimate")
        assert "parameters" in html and "Cannot" not in html
        job = c.submit(api_name="/train")  # the page's default model and budget (4 × 128, 60 s)
        assert wait_for(lambda: job.outputs() and iteration(job.outputs()[-1][1]) >= 5, timeout=120)
        t0 = time.monotonic()
        stop = c.submit(api_name="/stop")
        assert wait_for(lambda: len(stop.outputs()) >= 1, timeout=10, every=0.01)
        first_after = time.monotonic() - t0
        first = stop.outputs()[0][1]
        assert first_after <= 1.0, f"Stop's first update took {first_after:.2f} s"
        assert "Stop" in first and "the model is kept" in first and "measuring the full validation loss" in first
        last = stop.result(timeout=120)
        assert "Finished" in last[1] and "(stopped)" in last[1] and isinstance(last[3]["val_loss"], float)
        assert f"full validation loss <b>{last[3]['val_loss']:.4f}</b>" in last[1]
        assert wait_for(job.done, timeout=30)
        stopped_at = last[3]["iters"]
        cont = c.submit(api_name="/continue_training")  # resumes the run, with the page's budget
        assert wait_for(lambda: cont.outputs() and iteration(cont.outputs()[-1][1]) > stopped_at, timeout=120)
        c.predict(api_name="/stop")
        assert wait_for(cont.done, timeout=60)
        assert c.predict(api_name="/model_info")[0]["training"]["iters"] > stopped_at
    finally:
        c.close()


def numbers(estimate_html: str) -> tuple[int, float]:
    """Parameters and training memory (MB) from the estimate's read-out."""
    params = re.search(r"<b>([\d,]+)</b> parameters", estimate_html).group(1)
    memory = re.search(r"≈ <b>([\d,]+) MB</b>", estimate_html).group(1)
    return int(params.replace(",", "")), float(memory.replace(",", ""))


def test_the_switches_have_defaults_and_the_estimate_follows_them(client):
    from minigpt.model import GPTConfig, estimate_params
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    standard = dict(norm="layer", residual=True, mlp=True, pos_emb=True, activation="gelu")
    for endpoint in ("/train", "/continue_training", "/estimate"):
        params = {p["parameter_name"]: p for p in info[endpoint]["parameters"]}
        assert all(p["parameter_has_default"] for p in params.values()), endpoint
        assert {k: params[k]["parameter_default"] for k in standard} == standard, endpoint
    shape = dict(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32)
    base_params, base_memory = numbers(client.predict(**TINY, api_name="/estimate"))
    assert base_params == estimate_params(GPTConfig(**shape))
    for switches in (dict(norm="none"), dict(norm="rms"), dict(mlp=False), dict(pos_emb=False),
                     dict(norm="batch", residual=False, activation="sigmoid")):
        params, memory = numbers(client.predict(**TINY, **switches, api_name="/estimate"))
        assert params == estimate_params(GPTConfig(**shape, **switches)), switches
        if "mlp" in switches:  # no MLP: a quarter of the weights and less than half the activations
            assert params < base_params / 2 and memory < base_memory
    assert numbers(client.predict(norm="none", api_name="/estimate"))[0] == \
        estimate_params(GPTConfig(vocab_size=65, norm="none"))  # the page's default shape, one switch changed


def test_training_with_switches_names_them_and_plots_each_block(server, client):
    app, _ = server
    bn = dict(TINY, budget="iterations", amount=30, norm="batch", residual=False)
    plot, status, sample, card, badge, grad, act = client.predict(**bn, api_name="/train")
    assert "Finished" in status and card["iters"] == 30
    assert card["architecture"] == "BatchNorm, no residual"
    assert card["config"]["norm"] == "batch" and card["config"]["residual"] is False
    assert "BatchNorm, no residual" in badge
    info = client.predict(api_name="/model_info")[0]
    assert info["architecture"] == "BatchNorm, no residual" and info["config"]["residual"] is False
    # The per-block diagnostics of every evaluation (steps 10, 20, 30) reach the view and the two plots.
    view = app.PLAYGROUND.session(client.session_hash).view
    assert [r["iter"] for r in view.layers] == [10, 20, 30]
    for record in view.layers:
        assert len(record["layer_grad_norms"]) == len(record["layer_act_std"]) == 2
        assert all(g > 0 for g in record["layer_grad_norms"]) and all(a > 0 for a in record["layer_act_std"])
    assert grad["type"] == act["type"] == "matplotlib" and grad["plot"] != act["plot"]
    # Continue keeps the model's switches, and says so when the knobs ask for others.
    status = client.predict(**{**TINY, "budget": "iterations", "amount": 10}, api_name="/continue_training")[1]
    assert "keeps this model's architecture (BatchNorm, no residual)" in unescape(status)
    card = client.predict(api_name="/model_info")[0]["training"]
    assert card["iters"] == 40 and card["architecture"] == "BatchNorm, no residual"
    # The standard GPT's badge names no switch.
    client.predict(api_name="/reset")
    badge = client.predict(**{**TINY, "budget": "iterations", "amount": 10}, api_name="/train")[4]
    assert "trained in this session" in badge and "residual" not in badge and "Norm" not in badge
    client.predict(api_name="/reset")


def test_cheap_calls_have_a_pool_of_their_own_and_never_wait_behind_decoding(server):
    app, url = server
    pools = {f.api_name: (f.concurrency_id, f.concurrency_limit) for f in app.demo.fns.values()}
    for name in ("model_info", "model_info_on_tab", "tokenize", "tokenize_on_load", "estimate", "on_load"):
        assert pools[name] == ("cheap", None), name
    assert pools["generate"] == ("decode", 2)
    assert pools["compare_sampling"] == ("compare", 32)  # wide: concurrent Compares share the decoding thread
    assert pools["attention"] == pools["attention_scores"] == pools["next_token_distribution"] == ("views", 2)
    assert pools["train"] == pools["continue_training"] == ("train", None)  # the TrainingQueue gates training
    assert app.launch_kwargs()["max_threads"] >= 80
    busy = [Client(url, verbose=False) for _ in range(3)]
    c = Client(url, verbose=False)
    try:
        jobs = [x.submit("ROMEO:", 2000, "greedy", 0.8, 0, 1.0, 1, False, api_name="/generate") for x in busy]
        assert wait_for(lambda: sum(j.status().code.name == "IN_QUEUE" for j in jobs) == 1, timeout=60)
        t0 = time.monotonic()
        ids = c.predict(text="to be, or not to be", api_name="/tokenize")[1]
        info = c.predict(api_name="/model_info")[0]
        assert ids["char"]["count"] == 19 and info["params"] > 0
        assert time.monotonic() - t0 < 10, "a cheap call waited behind the decoding pool"
        assert any(not j.done() for j in jobs)  # the decode pool was still busy meanwhile
    finally:
        for x in (*busy, c):
            x.close()


def test_adamw_then_muon_overlays_the_previous_runs_val_curve(client):
    """Train with AdamW, switch the knob, Start again: the plot keeps the AdamW run's validation curve,
    labelled, beside the Muon run's; the run card and the badge say which optimizer trained the model."""
    quick = {**TINY, "budget": "iterations", "amount": 30}
    plot, _, _, card, badge, *_ = client.predict(**quick, optimizer="adamw", api_name="/train")
    assert card["optimizer"] == "adamw" and "trained with AdamW" in badge
    adamw_val = [(row[0], row[1]) for row in plot["data"] if row[2] == "val" and row[1] is not None]
    assert len(adamw_val) == 3
    plot, _, _, card, badge, *_ = client.predict(**quick, optimizer="muon", muon_lr=0.03, api_name="/train")
    assert card["optimizer"] == "muon" and card["train_config"]["muon_lr"] == 0.03 and "trained with Muon" in badge
    ghost = [(row[0], row[1]) for row in plot["data"] if row[2] == "previous run: AdamW, val" and row[1] is not None]
    assert ghost == adamw_val
    assert any(row[2] == "val" and row[1] is not None for row in plot["data"])


def test_presets_set_the_optimizer_of_their_recipe():
    from minigpt.train import TrainConfig
    from minigpt.ui.train_tab import PRESETS, apply_preset
    assert apply_preset("nanoGPT CPU recipe (val ≈ 1.88)")[-1] == "adamw"  # nanoGPT's recipe is AdamW's
    assert apply_preset("Default: 4 layers × 128, 60 s")[-1] == TrainConfig().optimizer
    assert all(len(v) == 11 for v in PRESETS.values())
