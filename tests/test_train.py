"""The trainer: it learns, it stops on request, it survives divergence, it continues."""

import math
import threading

import pytest
import torch

from minigpt.data import load_text, split_ids
from minigpt.evaluate import full_val_loss
from minigpt.model import GPTConfig
from minigpt.tokenizers import CharTokenizer
from minigpt.train import Done, Eval, Run, Sample, Start, Step, TrainConfig, lr_at, train


@pytest.fixture(scope="module")
def shakespeare():
    text = load_text("shakespeare")
    tok = CharTokenizer.from_text(text)
    return tok, split_ids(torch.tensor(tok.encode(text)))


def _run(tok, splits, **kw):
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=64, **kw)
    return Run.create(cfg, tok, splits, device="cpu", dtype="float32", seed=0, data_name="shakespeare")


def test_untrained_model_scores_log_vocab_on_the_protocol(shakespeare):
    tok, splits = shakespeare
    run = _run(tok, splits)
    assert abs(full_val_loss(run.model, splits.val) - math.log(65)) < 0.05


def test_short_run_learns_and_reports_events(shakespeare):
    tok, splits = shakespeare
    run = _run(tok, splits)
    events = list(train(run, TrainConfig(max_iters=300, eval_interval=100, eval_iters=4, sample_every=1,
                                         sample_tokens=20, batch_size=16)))
    assert isinstance(events[0], Start) and isinstance(events[-1], Done)
    steps = [e for e in events if isinstance(e, Step)]
    assert len(steps) == 300 and steps[-1].iter == 300 and all(s.tokens_per_s > 0 for s in steps)
    assert len([e for e in events if isinstance(e, Eval)]) == 3
    assert all(len(e.text) > 0 for e in events if isinstance(e, Sample))
    done = events[-1]
    assert done.reason == "max_iters" and done.iters == 300
    assert done.final_val_loss < 2.7  # untrained: ln 65 = 4.17; a bigram-level model: ~2.5


def test_stop_request_ends_within_a_step_and_keeps_the_model(shakespeare):
    tok, splits = shakespeare
    run = _run(tok, splits)
    stop = threading.Event()
    events = []
    for ev in train(run, TrainConfig(max_iters=10_000, eval_interval=10_000), stop):
        events.append(ev)
        if isinstance(ev, Step) and ev.iter == 20:
            stop.set()
    assert events[-1].reason == "stopped" and run.iters == 20
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    # Continue: the same Run trains on from step 20, with its optimizer.
    more = list(train(run, TrainConfig(max_iters=10, eval_interval=1000)))
    assert more[-1].iters == 30 and run.iters == 30
    assert any(not torch.equal(before[k], v) for k, v in run.model.state_dict().items())


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_divergence_restores_the_last_good_weights(shakespeare, optimizer):
    tok, splits = shakespeare
    run = _run(tok, splits)
    good = {k: v.clone() for k, v in run.model.state_dict().items()}
    original = run.model.forward

    def poisoned(idx, targets=None, **kw):
        logits, loss = original(idx, targets, **kw)
        return logits, loss * float("nan") if targets is not None and run.iters >= 5 else loss

    run.model.forward = poisoned
    events = list(train(run, TrainConfig(max_iters=100, eval_interval=1000, optimizer=optimizer)))
    done = events[-1]
    assert done.reason == "diverged" and "learning rate" in done.message
    assert all(torch.equal(good[k], v) for k, v in run.model.state_dict().items())
    if optimizer == "muon":  # the bad step never reached the optimizer's state
        assert all(torch.isfinite(b["momentum_buffer"]).all() for b in run.optimizer.muon.state.values())


def test_target_val_loss_stops_with_confirmed_full_loss(shakespeare):
    tok, splits = shakespeare
    run = _run(tok, splits)
    events = list(train(run, TrainConfig(max_iters=2000, eval_interval=50, eval_iters=4, target_val_loss=3.0,
                                         sample_every=0)))
    done = events[-1]
    assert done.reason == "target" and done.final_val_loss <= 3.0
    assert done.final_val_loss == pytest.approx(full_val_loss(run.model, splits.val))


def test_max_seconds_budget(shakespeare):
    tok, splits = shakespeare
    run = _run(tok, splits)
    done = list(train(run, TrainConfig(max_iters=1_000_000, max_seconds=1.5, eval_interval=10_000)))[-1]
    assert done.reason == "max_seconds" and done.seconds < 10


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10)
    assert lr_at(cfg, 0.0, 0) == pytest.approx(1e-3 / 11)
    assert lr_at(cfg, 0.0, 10) == pytest.approx(1e-3)
    assert lr_at(cfg, 0.5, 500) == pytest.approx(5.5e-4)
    assert lr_at(cfg, 1.0, 1000) == pytest.approx(1e-4)


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("lr", -1.0), ("max_iters", 0), ("max_seconds", -5.0),
                                         ("lr", float("nan")), ("batch_size", 10**9)])
def test_bad_train_config(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value}).validate()


def test_bigram_baseline_trains(shakespeare):
    tok, splits = shakespeare
    cfg = GPTConfig(vocab_size=65, block_size=8, model="bigram")
    run = Run.create(cfg, tok, splits, device="cpu", seed=0)
    done = list(train(run, TrainConfig(max_iters=300, lr=0.1, min_lr=0.01, eval_interval=1000)))[-1]
    assert 2.4 < done.final_val_loss < 3.2  # a lookup table cannot get much below ~2.5
