"""The playground engine (minigpt/playground.py, session.py, training_view.py, estimate.py, views.py):
sessions, training, stop/continue/reset, sampling, attention."""

import threading
import time

import pytest
import torch

from minigpt.checkpoint import CheckpointError, save_checkpoint
from minigpt.data import DataError
from minigpt.limits import Limits
from minigpt.model import GPTConfig, build_model
from minigpt.playground import Playground, tokenize
from minigpt.train_spec import TrainSpec, read_text_file
from minigpt.training_view import Thinned
from minigpt.views import repeat_fraction, sampling_columns
from minigpt.tokenizers import CharTokenizer


@pytest.fixture
def shipped(tmp_path, small_text):
    """A tiny stand-in for the shipped checkpoint, so these tests do not depend on checkpoints/."""
    tok = CharTokenizer.from_text(small_text)
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
    return save_checkpoint(tmp_path / "shipped.safetensors", model, tok, {"iters": 0, "val_loss": 3.0})


@pytest.fixture
def pg(shipped):
    return Playground(Limits(), shipped_path=shipped, device="cpu")


def tiny_spec(text, **kw):
    base = dict(data="text", text=text, tokenizer="char", model="gpt", n_embd=16, n_head=2, n_layer=1, block_size=16,
                batch_size=8, lr=3e-3, budget="iterations", amount=30, eval_interval=10, seed=1, sample_tokens=20)
    base.update(kw)
    return TrainSpec(**base)


def test_spec_refuses_impossible_shapes_with_a_clear_message():
    limits = Limits()
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        TrainSpec(n_embd=64, n_head=3).model_config(65, limits)
    with pytest.raises(ValueError, match="layers must be between"):
        TrainSpec(n_layer=0).model_config(65, limits)
    with pytest.raises(ValueError, match="over the limit"):
        TrainSpec(n_embd=1536, n_head=16, n_layer=24).model_config(65, limits)
    with pytest.raises(ValueError, match="seconds"):
        TrainSpec(amount=limits.max_train_seconds + 1).train_config(limits)
    assert TrainSpec(model="bigram", n_embd=50, n_head=3).model_config(65, limits).model == "bigram"
    cfg = TrainSpec(budget="iterations", amount=200).train_config(limits)
    assert cfg.max_iters == 200 and cfg.max_seconds == limits.max_train_seconds


def test_spec_carries_the_switches_into_the_model_config():
    limits = Limits()
    assert TrainSpec().model_config(65, limits) == GPTConfig(vocab_size=65)  # the knobs' defaults: the standard GPT
    cfg = TrainSpec(norm="batch", residual=False, mlp=False, pos_emb=False).model_config(65, limits)
    assert (cfg.norm, cfg.residual, cfg.mlp, cfg.pos_emb, cfg.activation) == ("batch", False, False, False, "gelu")
    with pytest.raises(ValueError, match="norm must be one of"):
        TrainSpec(norm="group").model_config(65, limits)
    with pytest.raises(ValueError, match="needs the MLP"):
        TrainSpec(mlp=False, activation="relu").model_config(65, limits)


def test_the_estimate_follows_the_switches(pg, small_text):
    from minigpt.model import estimate_params
    standard = pg.estimate(tiny_spec(small_text))
    for switches in (dict(mlp=False), dict(norm="none"), dict(pos_emb=False)):
        est = pg.estimate(tiny_spec(small_text, **switches))
        cfg = tiny_spec(small_text, **switches).model_config(est.vocab_size, Limits())
        assert est.params == estimate_params(cfg) < standard.params, switches
        assert est.memory_mb < standard.memory_mb and est.step_ms <= standard.step_ms, switches
    assert pg.estimate(tiny_spec(small_text, mlp=False)).step_ms < standard.step_ms  # two thirds of the FLOPs gone


def test_continue_keeps_the_switches_and_says_so(pg, small_text):
    s = pg.session("a")
    views = list(s.train(tiny_spec(small_text, norm="rms", activation="tanh")))
    assert views[-1].state == "done" and s.info()["architecture"] == "RMSNorm, tanh MLP"
    assert [r["iter"] for r in views[-1].layers] == [10, 20, 30]
    views = list(s.train(tiny_spec(small_text, amount=10), resume=True))  # the knobs now say standard GPT
    assert "keeps this model's architecture (RMSNorm, tanh MLP)" in views[-1].message
    assert s.current().model.config.norm == "rms" and views[-1].card["architecture"] == "RMSNorm, tanh MLP"
    assert [r["iter"] for r in views[-1].layers][-2:] == [30, 40]


def test_estimate_reports_size_memory_and_time_or_the_error(pg, small_text):
    est = pg.estimate(tiny_spec(small_text))
    assert est.ok and est.params > 0 and est.memory_mb > 0 and est.step_ms > 0 and est.iters == 30
    bad = pg.estimate(tiny_spec(small_text, n_embd=30, n_head=4))
    assert not bad.ok and "divisible" in bad.error
    empty = pg.estimate(tiny_spec("   "))
    assert not empty.ok and "paste some text" in empty.error
    bigram = pg.estimate(tiny_spec(small_text, model="bigram"))
    assert bigram.params == bigram.vocab_size ** 2


def test_thinned_keeps_few_points():
    t = Thinned(cap=50)
    for i in range(10_000):
        t.add(i)
    assert len(t.items) <= 51 and t.items[0] == 0 and t.items[-1] > 9000


def test_sessions_are_separate_capped_and_swept(pg):
    a, b = pg.session("a"), pg.session("b")
    assert a is not b and pg.session("a") is a
    small = Playground(Limits(), shipped_path=pg.shipped_path, max_sessions=3, idle_seconds=100, device="cpu")
    for k in "abcde":
        small.session(k)
    assert len(small) == 3 and "e" in small and "a" not in small
    assert small.sweep(now=time.monotonic() + 1000) == 3 and len(small) == 0
    s = small.session("x")
    assert small.drop("x") and s.stop_event.is_set() and not small.drop("x")


def test_sessions_holding_big_models_are_evicted_first_by_memory(pg, small_text):
    small = Playground(Limits(), shipped_path=pg.shipped_path, device="cpu")
    old = small.session("old")
    list(old.train(tiny_spec(small_text, amount=2), interval=0.0))
    small.max_resident_params = int(1.5 * old.resident_params())  # room for one such model, not two
    new = small.session("new")
    list(new.train(tiny_spec(small_text, amount=2), interval=0.0))
    small.session("visitor")  # the next look-up enforces the budget
    assert "old" not in small and "new" in small


def test_shipped_model_is_shared_and_read_only(pg):
    a, b = pg.session("a").current(), pg.session("b").current()
    assert a.model is b.model and a.shared
    assert not any(p.requires_grad for p in a.model.parameters())


def test_train_streams_views_and_the_model_becomes_current(pg, small_text):
    s = pg.session("t")
    views = list(s.train(tiny_spec(small_text), interval=0.0))
    last = views[-1]
    assert last.state == "done" and last.reason == "max_iters" and last.iter == 30
    assert len(last.steps) >= 20 and len(last.evals) == 3 and last.sample
    assert last.final_val_loss is not None and last.card["iters"] == 30 and last.card["seed"] == 1
    assert s.info()["source"] == "trained in this session" and not s.training
    assert s.current().model is s.run.model and not s.current().model.training


def test_throttled_views(pg, small_text):
    s = pg.session("t")
    views = list(s.train(tiny_spec(small_text, amount=20, eval_interval=1000), interval=1e9))
    assert [v.state for v in views] == ["training", "done"]  # Start, then Done only


def test_stop_halts_quickly_and_keeps_the_model_then_continue_resumes(pg, small_text):
    s = pg.session("s")
    views = []
    runner = threading.Thread(target=lambda: views.extend(s.train(tiny_spec(small_text, budget="seconds", amount=60),
                                                                  interval=0.05)))
    runner.start()
    deadline = time.monotonic() + 30
    while not (views and views[-1].iter >= 5) and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    final = s.stop()
    assert time.monotonic() - t0 < 5
    runner.join(5)
    assert final.state == "done" and final.reason == "stopped" and final.iter >= 5
    stopped_at = final.iter
    assert s.info()["source"] == "trained in this session"
    again = list(s.train(tiny_spec(small_text, amount=10, n_layer=3), resume=True, interval=0.0))
    assert again[-1].iter == stopped_at + 10 and "keeps this model's shape" in again[-1].message
    assert again[0].steps, "Continue keeps the curve so far"


def test_closing_the_stream_early_still_finishes_the_run(pg, small_text):
    s = pg.session("c")
    stream = s.train(tiny_spec(small_text, budget="seconds", amount=60), interval=0.0)
    next(stream)
    next(stream)
    t0 = time.monotonic()
    stream.close()  # what Gradio's cancel does to the handler, on its event loop: it must not wait for the run
    assert time.monotonic() - t0 < 1.0
    final = s.stop(wait=30)  # the run ends whole in the background
    assert not s.training and final.state == "done" and final.reason == "stopped"
    assert s.run.final_val_loss is not None
    list(s.train(tiny_spec(small_text, amount=5), interval=0.0))  # the lock was released


def test_one_training_per_session(pg, small_text):
    s = pg.session("one")
    stream = s.train(tiny_spec(small_text, budget="seconds", amount=60))
    next(stream)
    with pytest.raises(ValueError, match="already training"):
        next(s.train(tiny_spec(small_text)))
    stream.close()


def test_a_second_run_waits_its_turn_sees_its_place_and_can_leave(pg, small_text):
    """Limits() allow one training job: B waits (its views say its place and wait), Stop leaves the
    queue, a dropped session's waiting run never starts, and a waiter starts when the slot frees."""
    a, b, c = pg.session("a"), pg.session("b"), pg.session("c")
    run_a = a.train(tiny_spec(small_text, budget="seconds", amount=60), interval=0.05)
    assert next(run_a).state == "training"
    model_b = b.current().model
    run_b = b.train(tiny_spec(small_text, seed=2))
    waiting = next(run_b)
    assert waiting.state == "waiting" and "place 1 of 1" in waiting.message and "about" in waiting.message
    assert b.training and pg.training_queue.snapshot()["waiting"] == ["b"]
    assert b.stop_soon().message.startswith("Left the training queue")  # Stop while waiting: leaves the queue
    left = list(run_b)[-1]
    assert left.state == "idle" and "nothing was trained" in left.message
    assert not b.training and b.current().model is model_b and b.run is None
    run_c = c.train(tiny_spec(small_text, seed=3))
    assert "place 1 of 1" in next(run_c).message
    assert pg.drop("c")  # the tab closed while waiting: its run never starts
    assert list(run_c)[-1].state == "idle" and c.run is None and pg.training_queue.snapshot()["waiting"] == []
    run_b = b.train(tiny_spec(small_text, seed=2, amount=5), interval=0.0)
    assert next(run_b).state == "waiting"
    a.stop_event.set()
    assert list(run_a)[-1].card["seed"] == 1  # A's run ends whole: its slot frees and B starts
    assert list(run_b)[-1].state == "done" and b.run.iters == 5 and b.current().card["seed"] == 2
    assert a.current().card["seed"] == 1 and pg.training_queue.snapshot()["running"] == []


def test_bad_training_input_leaves_the_model_alone(pg, small_text):
    s = pg.session("bad")
    list(s.train(tiny_spec(small_text, amount=5), interval=0.0))
    model = s.current().model
    with pytest.raises(DataError, match="too few"):
        next(s.train(tiny_spec("abc" * 3, block_size=64)))
    with pytest.raises(ValueError, match="divisible"):
        next(s.train(tiny_spec(small_text, n_embd=30, n_head=4)))
    assert s.current().model is model and not s.training


def test_reset_and_drop_free_the_model_and_its_run(pg, small_text):
    import gc
    import weakref
    s = pg.session("free")
    list(s.train(tiny_spec(small_text, amount=5), interval=0.0))
    model, run = weakref.ref(s.current().model), weakref.ref(s.run)
    s.reset()
    gc.collect()
    assert model() is None and run() is None, "reset must not keep the old model or run alive"
    list(s.train(tiny_spec(small_text, amount=5), interval=0.0))
    model = weakref.ref(s.current().model)
    del s
    assert pg.drop("free")
    gc.collect()
    assert model() is None, "a closed session's model must be freed"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_train_reset_cycles_do_not_grow_memory(pg, small_text):
    """Each cycle makes a ~0.8M-parameter model and its Adam state (~10 MB); a leak would add that per cycle."""
    import gc
    s = pg.session("cycles")
    spec = tiny_spec(small_text * 4, n_embd=128, n_head=4, n_layer=4, block_size=32, amount=3, eval_interval=1000)
    sizes = []
    for _ in range(10):
        list(s.train(spec, interval=1e9))
        s.reset()
        gc.collect()
        sizes.append(rss_mb())
    assert sizes[-1] - sizes[2] < 25, f"RSS after each train/reset cycle (MB): {[round(x) for x in sizes]}"


def test_continue_from_the_shipped_model_fine_tunes_a_copy(pg, small_text):
    s = pg.session("ft")
    shipped = pg.shipped().model
    before = {k: v.clone() for k, v in shipped.state_dict().items()}
    views = list(s.train(tiny_spec(small_text, amount=5), resume=True, interval=0.0))
    assert views[-1].iter == 5 and s.current().model is not shipped
    assert all(torch.equal(before[k], v) for k, v in shipped.state_dict().items())


def test_reset_goes_back_to_the_shipped_model(pg, small_text):
    s = pg.session("r")
    list(s.train(tiny_spec(small_text, amount=5), interval=0.0))
    s.reset()
    assert s.current().shared and s.run is None and s.view.state == "idle"


def test_save_then_load_round_trip_and_bad_files_are_refused(pg, small_text, tmp_path):
    s = pg.session("ck")
    list(s.train(tiny_spec(small_text, amount=5), interval=0.0))
    path = s.save(tmp_path)
    assert path.suffix == ".safetensors"
    other = pg.session("other")
    info = other.load(path)
    assert info["source"].startswith("uploaded") and info["training"]["iters"] == 5
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        other.load(bad)
    assert other.info()["source"].startswith("uploaded")  # unchanged
    assert other.load_shipped()["source"].startswith("shipped")


def test_compare_is_repeatable_and_explains_each_step(pg):
    s = pg.session("g")
    cols = sampling_columns(top_k=5, top_p=0.9)
    runs = [list(s.compare("First", 20, 7, cols)) for _ in range(2)]
    final = runs[0][-1]
    assert [c["text"] for c in final] == [c["text"] for c in runs[1][-1]]
    assert len(final) == 6 and all(c["n"] == 20 and c["done"] for c in final)
    assert all(c["perplexity"] > 1 for c in final)
    info = s.next_token("greedy", 3)
    assert info["chosen"] == info["ids"][0] and info["chosen_rank"] == 1  # greedy takes the top token
    for probs in info["probs"].values():
        assert all(0 <= p <= 1 for p in probs)
    t_low, t_high = info["probs"][0.5], info["probs"][2.0]
    assert t_low[0] >= info["probs"][1.0][0] >= t_high[0]  # low T sharpens, high T flattens
    with pytest.raises(ValueError, match="no column"):
        s.next_token("nope", 1)
    with pytest.raises(ValueError):
        list(s.compare("First", 10, 1, []))
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        list(s.compare("Ωmega", 10, 1, cols))


def test_generate_records_cache_speeds(pg):
    s = pg.session("kv")
    from minigpt.sampling import SamplingConfig
    outs = {c: list(s.generate("First", 30, SamplingConfig("greedy"), 1, use_cache=c))[-1] for c in (True, False)}
    assert outs[True][0] == outs[False][0]  # the cache changes the speed, never the text
    assert set(s.cache_speed) == {"on", "off"} and all(v > 0 for v in s.cache_speed.values())


def test_a_closed_tabs_generation_and_comparison_end_at_their_next_token(pg):
    """Gradio goes on running a closed tab's event: dropping the session ends its decoding loops,
    without final results."""
    from minigpt.sampling import SamplingConfig
    s = pg.session("gone")
    gen = s.generate("First", 500, SamplingConfig("greedy"), 1, interval=0.0)
    comp = s.compare("First", 500, 1, sampling_columns(), interval=0.0)
    text, stats = next(gen)
    columns = next(comp)
    assert not stats["done"] and not any(c["done"] for c in columns)
    pg.drop("gone")
    assert list(gen) == [] and list(comp) == []
    assert s.comparison == {} and "on" not in s.cache_speed  # nothing of the unfinished runs is kept


def test_prompts_longer_than_the_context_are_noted_and_huge_ones_refused(pg):
    from minigpt.sampling import SamplingConfig
    s = pg.session("long")
    assert s.prompt_note("First") is None  # the stand-in model's context is 16
    assert s.prompt_note("First Citizen: hear me") == ("The prompt is 22 tokens long and the model's context is 16: "
                                                       "it sees only the last 16.")
    text, stats = list(s.generate("First Citizen: hear me", 5, SamplingConfig("greedy"), 1))[-1]
    assert stats["tokens"] == 5
    with pytest.raises(ValueError, match="prompt is 100,001 characters long; the limit is 100,000"):
        next(s.generate("F" * 100_001, 5, SamplingConfig("greedy"), 1))
    with pytest.raises(ValueError, match="prompt must be text"):
        next(s.compare(b"First", 5, 1, sampling_columns()))


def test_attention_is_causal_and_rows_sum_to_one(pg):
    s = pg.session("a")
    a = s.attention("First Citizen")
    w = a["weights"]
    assert w.shape == (2, 2, 13, 13) and a["tokens"][0] == "F"
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 13), atol=1e-5)
    assert torch.all(torch.triu(w, diagonal=1) == 0)
    long = s.attention("First Citizen " * 10)
    assert long["cropped"] and len(long["tokens"]) == 16


def test_score_scale_measures_the_current_model(pg):
    s = pg.session("scores")
    r = s.score_scale("First Citizen: speak")
    assert r.tokens == 16 and r.layers == [0, 1]  # the stand-in's context is 16: the text's last 16 tokens
    assert all(es >= eu for es, eu in zip(r.entropy_scaled, r.entropy_unscaled))
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        s.score_scale("€")


def test_attention_of_a_bigram_model_says_why_not(pg, small_text):
    s = pg.session("b")
    list(s.train(tiny_spec(small_text, model="bigram", amount=3), interval=0.0))
    with pytest.raises(ValueError, match="bigram model has no attention"):
        s.attention("First")


def test_tokenize_shows_both_tokenizers():
    r = tokenize("Hi é", "".join(sorted(set("abcdefghiH "))))
    assert r["char"]["count"] == 4 and r["char"]["unknown"] == ["é"]
    assert [i is None for _, i in r["char"]["tokens"]] == [False, False, False, True]
    assert r["gpt2"]["vocab_size"] == 50257 and r["gpt2"]["count"] >= 2


def test_repeat_fraction_and_columns():
    assert repeat_fraction([1, 2, 3, 4] * 10) > 0.8
    assert repeat_fraction(list(range(40))) == 0
    names = [n for n, _ in sampling_columns(low_t=0.5, high_t=2.0, top_k=10, top_p=0.9)]
    assert names == ["greedy", "multinomial (T = 1)", "temperature T = 0.5", "temperature T = 2", "top-k (k = 10)",
                     "top-p (p = 0.9)"]


def test_read_text_file_checks_uploads(tmp_path):
    ok = tmp_path / "ok.txt"
    ok.write_text("hello there\n", encoding="utf-8")
    assert read_text_file(ok, Limits()) == "hello there\n"
    binary = tmp_path / "x.txt"
    binary.write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="binary"):
        read_text_file(binary, Limits())
    with pytest.raises(DataError, match="over the upload limit"):
        read_text_file(ok, Limits(max_upload_mb=1e-6))


def test_stop_soon_answers_before_the_full_validation(pg, small_text, monkeypatch):
    """Stop's first answer (stopped at iteration N, model kept) does not wait for the full-validation loss."""
    import minigpt.train as train_module
    real = train_module.full_val_loss

    def slow_full_val(*args, **kwargs):
        time.sleep(3.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "full_val_loss", slow_full_val)
    s = pg.session("soon")
    views = []
    runner = threading.Thread(target=lambda: views.extend(s.train(tiny_spec(small_text, budget="seconds", amount=60),
                                                                  interval=0.05)))
    runner.start()
    assert wait_until(lambda: views and views[-1].iter >= 5)
    t0 = time.monotonic()
    first = s.stop_soon()
    assert time.monotonic() - t0 < 1.0
    # "stopped": the trainer has left its loop; "stopping": it is finishing the step in progress (a busy machine)
    assert first.state in ("stopped", "stopping") and first.final_val_loss is None and s.training
    assert s.current().source == "trained in this session"
    final = s.stop(wait=30)
    runner.join(5)
    assert final.state == "done" and final.reason == "stopped" and final.final_val_loss is not None
    assert final.iter == s.run.iters and final.iter - first.iter <= (0 if first.state == "stopped" else 1)
    assert views[-1].state == "done"  # the training stream ends with the same final view
    assert s.stop_soon().state == "done"  # nothing to stop: the last view


def wait_until(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_tokenizer_view_works_offline_from_the_shipped_vocabulary(pg, tmp_path, monkeypatch):
    """No Tiny Shakespeare file and no network: the char side uses the shipped model's vocabulary."""
    import minigpt.data
    import minigpt.tokenizers

    def offline(*args, **kwargs):
        raise OSError("no network here")

    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(minigpt.data, "download", offline)
    monkeypatch.setattr(minigpt.tokenizers, "gpt2_encoding", offline)
    shipped_chars = "".join(pg.shipped().tokenizer.chars)
    assert pg.char_vocab() == shipped_chars
    r = pg.tokenize("First Citizen")
    assert r["char"]["count"] == 13 and r["char"]["vocab_size"] == len(shipped_chars) and not r["char"]["unknown"]
    assert r["gpt2"]["count"] == 0 and "minigpt download" in r["gpt2"]["error"]


def test_a_new_run_keeps_the_previous_runs_val_curve_named_by_its_optimizer(pg, small_text):
    from minigpt import plots
    s = pg.session("t")
    first = list(s.train(tiny_spec(small_text, optimizer="adamw"), interval=0.0))[-1]
    assert first.ghost == () and first.card["optimizer"] == "adamw"
    views = list(s.train(tiny_spec(small_text, optimizer="muon", muon_lr=0.01), interval=0.0))
    # From the first view on: the AdamW run's validation estimates, as they were.
    assert all(v.ghost == tuple((it, val) for it, _, val in first.evals) for v in views)
    assert all(v.ghost_optimizer == "adamw" for v in views)
    last = views[-1]
    assert last.card["optimizer"] == "muon" and last.card["train_config"]["muon_lr"] == 0.01
    frame = plots.loss_frame(last.steps, last.evals, last.ghost, last.ghost_optimizer)
    ghost = frame[frame.series == "previous run: AdamW, val"].dropna()
    assert list(ghost.step) == [it for it, _, _ in first.evals] and set(frame.series) == set(plots.LOSS_COLOURS)
    # Continue keeps the same ghost; Reset forgets it.
    cont = list(s.train(tiny_spec(small_text, optimizer="muon", amount=10), resume=True, interval=0.0))[-1]
    assert cont.ghost == last.ghost and cont.ghost_optimizer == "adamw"
    third = list(s.train(tiny_spec(small_text, optimizer="adamw", amount=10), interval=0.0))[-1]
    assert third.ghost_optimizer == "muon" and third.ghost[-1][0] == 40  # the continued run, whole
    s.reset()
    assert list(s.train(tiny_spec(small_text, amount=10), interval=0.0))[-1].ghost == ()


def test_ghost_curve_is_thinned_once_and_keeps_its_end():
    from minigpt.training_view import GHOST_POINTS, ghost_curve
    evals = [(i, 2.0, 3.0 - i / 1e4) for i in range(0, 5000, 5)]
    curve = ghost_curve(evals)
    assert len(curve) <= GHOST_POINTS + 1 and curve[0] == (0, 3.0) and curve[-1] == (4995, 3.0 - 4995 / 1e4)
    assert ghost_curve([]) == () and ghost_curve(evals[:3]) == tuple((it, val) for it, _, val in evals[:3])


def test_spec_takes_the_optimizer_and_refuses_bad_ones_naming_the_knob():
    limits = Limits()
    cfg = TrainSpec(optimizer="adamw", muon_lr=0.05).train_config(limits)
    assert cfg.optimizer == "adamw" and cfg.muon_lr == 0.05
    assert TrainSpec().train_config(limits).optimizer == "muon"  # TrainConfig's default
    with pytest.raises(ValueError, match="optimizer must be one of adamw, muon, got 'sgd'"):
        TrainSpec(optimizer="sgd").train_config(limits)
    for bad in (0.0, -1.0, float("nan"), 11.0):
        with pytest.raises(ValueError, match="Muon learning rate"):
            TrainSpec(muon_lr=bad).train_config(limits)
