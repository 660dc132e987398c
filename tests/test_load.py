"""A bounded load test: 8 clients at once against `python app.py` on 127.0.0.1.

Two rounds; in each, 8 fresh gradio_client clients run a fixed script at the same time (model
info, tokenizer, estimate, sampling comparison, next-token view, generation, attention, and for
half of them a short training run: four trainers against a limit of one, so three queue), then
close. Every request must be answered and none may fail; the server's memory must stay bounded
and come back down once the clients have gone (their sessions are freed). The figures are
written to test-output/load-report.json. Run it alone with `python tests/test_load.py`.
"""

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT  # noqa: E402
from loadkit import app_server, client, figures, reported, rss_mb, run_all, timed  # noqa: E402

CLIENTS = 8
ROUNDS = 2  # the second round against the first: memory comes back down once clients have gone
PEAK_RSS_LIMIT_MB = 1500  # the idle server holds ~450 MB (torch, gradio, the shipped model)
REPORT = ROOT / "test-output" / "load-report.json"

TRAIN = dict(data="shakespeare", text="", upload=None, tokenizer="char", model="gpt", n_embd=32, n_head=2, n_layer=2,
             block_size=32, dropout=0.0, batch_size=16, lr=3e-3, budget="iterations", amount=30, eval_interval=10,
             seed=1)
COMPARE = dict(prompt="ROMEO:", tokens=40, seed=3, strategies=["greedy", "multinomial", "low temperature",
                                                                 "high temperature"],
               low_t=0.5, high_t=2.0, top_k=10, top_p=0.9, colour=True, use_cache=True)


def script(i: int):
    """(name, kwargs, api_name, check) for client i: the same fixed count of requests for everyone."""
    steps = [
        ("model_info", {}, "/model_info", lambda r: r[0]["params"] > 0),
        ("tokenize", dict(text=f"Client {i}: to be, or not to be"), "/tokenize", lambda r: r[1]["char"]["count"] > 0),
        ("estimate", TRAIN, "/estimate", lambda r: "parameters" in r),
        ("compare", {**COMPARE, "seed": i}, "/compare_sampling", lambda r: len(r[1]) == 4),
        ("next_token", dict(column="greedy", step=5), "/next_token_distribution", lambda r: "rank" in r[1]),
        ("generate", dict(prompt="JULIET:", tokens=60, strategy="temperature", temperature=0.8, top_k=0, top_p=1.0,
                          seed=i, use_cache=True), "/generate", lambda r: r[0].startswith("JULIET:")),
        ("attention", dict(text="ROMEO: hi there", layer=0, head="all"), "/attention",
         lambda r: r[1].startswith("15 tokens")),
    ]
    if i % 2 == 0:
        steps.append(("train", {**TRAIN, "seed": i}, "/train", lambda r: r[3]["iters"] == 30))
    else:
        steps.append(("save", {}, "/save", lambda r: str(r).endswith(".safetensors")))
    steps.append(("model_info", {}, "/model_info", lambda r: r[0]["params"] > 0))
    return steps


def run_round(url: str, results: list):
    def client_main(i):
        c = client(url)
        try:
            for name, kwargs, api, check in script(i):
                timed(lambda *r: results.append(r), name, lambda: c.predict(**kwargs, api_name=api), check)
        finally:
            c.close()

    run_all(client_main, CLIENTS, timeout=600)


def load_test() -> dict:
    with app_server(REPORT.with_name("load-server.log")) as (server, url):
        idle = rss_mb(server.pid)
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append(rss_mb(server.pid))
                stop.wait(0.2)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results, after, t0 = [], [], time.monotonic()
        for _ in range(ROUNDS):
            run_round(url, results)
            time.sleep(4)  # heartbeats stop: the server frees the closed clients' sessions
            after.append(rss_mb(server.pid))
        stop.set()
        sampler.join()
        seconds = time.monotonic() - t0
        peak = rss_mb(server.pid, "VmHWM")
        alive = server.poll() is None
    f = figures(results)
    return {"clients": CLIENTS, "rounds": ROUNDS, "requests": CLIENTS * ROUNDS * len(script(0)),
            "answered": f["requests"], "errors": f["errors"], "error_messages": f["error_messages"],
            "seconds": round(seconds, 1), "server_alive": alive,
            "rss_idle_mb": round(idle), "rss_peak_mb": round(peak), "rss_after_each_round_mb": [round(x) for x in after],
            "rss_samples": len(samples), "median_s": f["p50_s"], "max_s": f["max_s"]}


@pytest.mark.slow
def test_eight_clients_all_answered_memory_bounded():
    report = reported(load_test, REPORT)
    assert report["answered"] == report["requests"]
    assert report["rss_peak_mb"] < PEAK_RSS_LIMIT_MB, report
    after = report["rss_after_each_round_mb"]  # a session kept alive would add >= 10 MB a client
    assert max(after[1:]) - after[0] < 80, f"memory grew from round to round: {report}"


if __name__ == "__main__":
    reported(load_test, REPORT)
