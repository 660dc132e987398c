"""Shared decoding: concurrent requests share one forward a token and get what each gets alone."""

import threading

import pytest
import torch

from conftest import CountingForward, forward_sizes, wait_for
from minigpt.decode_batcher import DecodeBatcher, DecodeError
from minigpt.generate import generate
from minigpt.model import Bigram, GPTConfig
from minigpt.sampling import SamplingConfig

G, M = SamplingConfig("greedy"), SamplingConfig("multinomial")
T05, T2 = SamplingConfig("temperature", 0.5), SamplingConfig("temperature", 2.0)
TOPK, TOPP = SamplingConfig("multinomial", top_k=3), SamplingConfig("temperature", 0.9, top_p=0.8)


def together(batcher, calls):
    """Run each fn() in its own thread, all submitted before any group starts; their results (or errors)."""
    out = [None] * len(calls)

    def run(i, fn):
        try:
            out[i] = fn()
        except Exception as e:  # handed back to the test
            out[i] = e

    batcher.pause()
    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    assert wait_for(lambda: batcher.waiting() == len(calls), timeout=30)
    batcher.resume()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return out


def alone_ids(model, tok, prompt, n, sampling, seed, use_cache=True):
    return [s.id for s in generate(model, tok, prompt, n, SamplingConfig(**sampling.to_dict()), seed=seed,
                                   use_cache=use_cache, top_n=5)]


REQUESTS = [("First", 8, [G, M, T05], 1), ("Speak", 12, [T2, M], 2), ("hear ", 30, [TOPK, TOPP, G, M], 3)]


@pytest.mark.parametrize("use_cache", [True, False])
def test_concurrent_requests_share_one_forward_a_token_and_each_matches_alone(gpt, tok, use_cache):
    # Same prompt length (5), different prompts, seeds, strategies and lengths; 30 tokens pass the context (16).
    batcher = DecodeBatcher()
    spy = CountingForward(gpt)
    outs = together(batcher, [lambda p=p, n=n, c=c, s=s: list(batcher.generate(gpt, tok, p, n, c, seed=s, top_n=5,
                                                                                 use_cache=use_cache))
                              for p, n, c, s in REQUESTS])
    spy.handle.remove()
    # Each prompt once at batch 1, then one forward a token for every row still decoding: 9, 6 then 4
    # rows; recomputing (past the context, or without the cache), each distinct window once.
    rows = [(tok.encode(p), [r[b].id for r in out]) for (p, n, c, s), out in zip(REQUESTS, outs) for b in range(len(c))]
    assert spy.batches == [1, 1, 1] + forward_sizes(16, rows, use_cache)
    if use_cache:
        assert spy.batches[3:14] == [9] * 7 + [6] * 4
    for (prompt, n, cfgs, seed), rows in zip(REQUESTS, outs):
        assert len(rows) == n and all(len(r) == len(cfgs) for r in rows)
        for b, cfg in enumerate(cfgs):
            assert [r[b].id for r in rows] == alone_ids(gpt, tok, prompt, n, cfg, seed, use_cache), (prompt, cfg)
            alone = list(generate(gpt, tok, prompt, n, SamplingConfig(**cfg.to_dict()), seed=seed, top_n=5))
            assert "".join(r[b].text for r in rows) == "".join(a.text for a in alone)
            assert all(abs(a.prob - r[b].prob) < 1e-5 and len(r[b].top_ids) == 5 for a, r in zip(alone, rows))
    assert wait_for(lambda: batcher._thread is None, timeout=10)  # idle: the thread is gone


@pytest.mark.parametrize("use_cache", [True, False])
def test_rows_with_the_same_window_are_recomputed_once(gpt, tok, use_cache):
    """Three Compares with the same prompt and seed (a classroom's defaults): past the context each
    window runs once, and every row still gets what it gets alone."""
    batcher = DecodeBatcher()
    spy = CountingForward(gpt)
    n, cfgs = 24, [G, M, T2]
    outs = together(batcher, [lambda: list(batcher.generate(gpt, tok, "First", n, cfgs, seed=9, use_cache=use_cache))
                              for _ in range(3)])
    spy.handle.remove()
    one = [(tok.encode("First"), [r[b].id for r in outs[0]]) for b in range(len(cfgs))]
    cached = 11 if use_cache else 0  # prompt 5, context 16: nine rows through the cache, then one request's windows
    assert spy.batches == [1, 1, 1] + [9] * cached + forward_sizes(16, one, use_cache)[cached:]
    for rows in outs:
        for b, cfg in enumerate(cfgs):
            assert [r[b].id for r in rows] == alone_ids(gpt, tok, "First", n, cfg, 9, use_cache), cfg


def test_different_prompt_lengths_run_as_separate_groups_stepped_in_turn(gpt, tok):
    batcher = DecodeBatcher()
    spy = CountingForward(gpt)
    calls = [("First", 10, [G, M], 4), ("All", 10, [T2], 5), ("Before we", 10, [TOPK, T05, M], 6)]
    outs = together(batcher, [lambda p=p, n=n, c=c, s=s: list(batcher.generate(gpt, tok, p, n, c, seed=s, top_n=5))
                              for p, n, c, s in calls])
    spy.handle.remove()
    assert sorted(spy.batches) == sorted([1] * 3 + [2] * 9 + [1] * 9 + [3] * 9)
    for (prompt, n, cfgs, seed), rows in zip(calls, outs):
        for b, cfg in enumerate(cfgs):
            assert [r[b].id for r in rows] == alone_ids(gpt, tok, prompt, n, cfg, seed)


def test_bigram_requests_share_a_batch_too(tok):
    torch.manual_seed(1)
    model = Bigram(GPTConfig(vocab_size=tok.vocab_size, block_size=8, model="bigram")).eval()
    batcher = DecodeBatcher()
    calls = [("Sp", 20, [G, T2], 2), ("Al", 15, [M], 3)]
    outs = together(batcher, [lambda p=p, n=n, c=c, s=s: list(batcher.generate(model, tok, p, n, c, seed=s, top_n=5))
                              for p, n, c, s in calls])
    for (prompt, n, cfgs, seed), rows in zip(calls, outs):
        for b, cfg in enumerate(cfgs):
            assert [r[b].id for r in rows] == alone_ids(model, tok, prompt, n, cfg, seed)


def test_a_closed_consumer_leaves_the_batch_and_the_others_go_on(gpt, tok):
    batcher = DecodeBatcher()
    spy = CountingForward(gpt)
    closed = threading.Event()

    def hold(module, args):  # the 7th forward (2 prompts, then the 5th step) waits until the quitter closed
        if len(spy.batches) == 7:
            assert closed.wait(30)

    gate = gpt.register_forward_pre_hook(hold)

    def quit_early():
        steps = batcher.generate(gpt, tok, "First", 500, [M, T2], seed=8)
        first = [next(steps) for _ in range(3)]
        steps.close()  # as Gradio does when the tab closes or Stop cancels
        closed.set()
        return len(first)

    outs = together(batcher, [quit_early, lambda: list(batcher.generate(gpt, tok, "Speak", 200, [G, M], seed=9))])
    spy.handle.remove(), gate.remove()
    assert outs[0] == 3 and len(outs[1]) == 200
    assert [r[1].id for r in outs[1]] == alone_ids(gpt, tok, "Speak", 200, M, 9)
    # Its 3rd step needs 2 batched forwards; the gate lets at most 5 run before its rows leave.
    k = spy.batches.count(4)
    assert 2 <= k <= 5 and spy.batches == [1, 1] + [4] * k + [2] * (199 - k)
    assert wait_for(lambda: batcher._thread is None, timeout=10)
    steps = batcher.generate(gpt, tok, "First", 10_000, [M], seed=1)
    next(steps)
    steps.close()
    assert wait_for(lambda: batcher._thread is None, timeout=10)  # alone, too: nothing keeps decoding for it


def test_an_error_while_decoding_reaches_every_waiting_request_and_the_next_ones_work(gpt, tok):
    batcher = DecodeBatcher()
    calls = []

    def fail_later(module, args):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("boom")

    hook = gpt.register_forward_pre_hook(fail_later)
    outs = together(batcher, [lambda s=s: list(batcher.generate(gpt, tok, "First", 20, [G, M], seed=s))
                              for s in range(3)])
    hook.remove()
    assert all(isinstance(o, DecodeError) and "boom" in str(o) for o in outs)
    assert [r[0].id for r in batcher.generate(gpt, tok, "First", 20, [G], seed=1)] == alone_ids(gpt, tok, "First",
                                                                                               20, G, 1)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread re-raises, to log it
def test_if_the_thread_itself_dies_every_caller_gets_an_error(gpt, tok, monkeypatch):
    from minigpt import decode_batcher

    def die(self):
        raise SystemExit("the thread died")  # not an Exception: escapes the per-group handler

    monkeypatch.setattr(decode_batcher._Group, "step", die)
    batcher = DecodeBatcher(name="minigpt-decode-dies")
    outs = together(batcher, [lambda s=s: list(batcher.generate(gpt, tok, "First", 5, [G], seed=s)) for s in range(2)])
    assert all(isinstance(o, DecodeError) for o in outs)
    assert batcher._thread is None
    for t in threading.enumerate():
        if t.name == "minigpt-decode-dies":
            t.join(10)  # it re-raises (to log the failure): let that happen inside this test


@pytest.mark.parametrize("join_wait", [0.0, 60.0])
def test_a_late_request_joins_the_next_group_or_starts_its_own_after_join_wait(gpt, tok, join_wait):
    batcher = DecodeBatcher(join_wait=join_wait)
    gate, sizes = threading.Event(), []

    def hold(module, args):  # the first request's 5th forward waits until the second one waits
        sizes.append(args[0].shape[0])
        if len(sizes) == 5:
            assert gate.wait(30)

    hook = gpt.register_forward_pre_hook(hold)
    early = []
    first = threading.Thread(target=lambda: early.extend(batcher.generate(gpt, tok, "First", 20, [G, M], seed=1)))
    first.start()
    assert wait_for(lambda: len(sizes) == 5, timeout=30)
    late = []
    second = threading.Thread(target=lambda: late.extend(batcher.generate(gpt, tok, "Speak", 20, [T2, M, G], seed=2)))
    second.start()
    assert wait_for(lambda: batcher.waiting() == 1, timeout=30)
    gate.set()
    first.join(30), second.join(30)
    hook.remove()
    if join_wait:  # waited for the first group to finish: 1 + 19 forwards of 2 rows, then its own 1 + 19 of 3
        columns = [(tok.encode(p), [r[b].id for r in out]) for p, out in (("First", early), ("Speak", late))
                   for b in range(len(out[0]))]
        assert sizes == [1] + forward_sizes(16, columns[:2]) + [1] + forward_sizes(16, columns[2:])
        assert sizes[:12] == [1] + [2] * 11 and sizes[20:32] == [1] + [3] * 11
    else:  # started at once, stepped in turn with the first group
        assert sizes.index(3) < len(sizes) - 1 - sizes[::-1].index(2)
    assert [r[0].id for r in late] == alone_ids(gpt, tok, "Speak", 20, T2, 2)


def test_requests_are_checked_before_they_join(gpt, tok):
    batcher = DecodeBatcher()
    with pytest.raises(ValueError, match="strategy must be"):
        next(batcher.generate(gpt, tok, "First", 5, [SamplingConfig("nope")]))
    with pytest.raises(ValueError, match="at least one"):
        next(batcher.generate(gpt, tok, "First", 5, []))
    assert list(batcher.generate(gpt, tok, "First", 0, [G])) == [] and batcher._thread is None


def test_sessions_comparing_at_once_share_the_shipped_models_batch(tmp_path, tok, gpt):
    from minigpt.checkpoint import save_checkpoint
    from minigpt.limits import Limits
    from minigpt.playground import Playground
    from minigpt.views import sampling_columns
    shipped = save_checkpoint(tmp_path / "shipped.safetensors", gpt, tok, {"iters": 0})
    pg = Playground(Limits(), shipped_path=shipped, device="cpu")
    sessions = [pg.session(f"s{i}") for i in range(3)]
    model = sessions[0].inference_model().model
    assert all(s.inference_model().model is model for s in sessions)  # one shared model
    spy = CountingForward(model)
    cols, n = sampling_columns(), 30  # four strategies; past the context window
    outs = together(pg.batcher, [lambda s=s, i=i: list(s.compare("First", n, 100 + i, cols, interval=0.0))
                                 for i, s in enumerate(sessions)])
    spy.handle.remove()
    # One forward a token for the three sessions' twelve rows: 11 steps through the cache (prompt 5,
    # context 16), then recomputations, each distinct window once (the greedy rows of one prompt share one).
    rows = [(tok.encode("First"), s.comparison[name]["ids"]) for s in sessions for name, _ in cols]
    assert spy.batches == [1, 1, 1] + [12] * 11 + forward_sizes(16, rows)[11:]
    assert max(spy.batches[14:]) <= 10
    for i, (s, views) in enumerate(zip(sessions, outs)):
        final = views[-1]
        assert all(len(v) == 4 for v in views) and all(c["done"] and c["n"] == n for c in final)
        assert all(0 < c["tokens_per_s"] < float("inf") for c in final)
        for (name, sampling), col in zip(cols, final):
            assert s.comparison[name]["ids"] == alone_ids(model, tok, "First", n, sampling, 100 + i), name
