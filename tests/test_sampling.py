"""Sampling strategies against their definitions."""

import pytest
import torch
import torch.nn.functional as F

from minigpt.sampling import (SamplingConfig, next_token_probs, sample_next, sample_rows, scaled_logits,
                              temperature_from_probs)

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])


def test_greedy_is_argmax():
    assert sample_next(LOGITS, SamplingConfig("greedy")).item() == 0


def test_sample_rows_draws_what_each_row_draws_alone():
    """Batched filtering, per-row draws: the same tokens, and each generator left where sample_next leaves it."""
    cfgs = [SamplingConfig("greedy"), SamplingConfig("multinomial"), SamplingConfig("temperature", 0.5),
            SamplingConfig("temperature", 2.0), SamplingConfig("temperature", 0.8, top_k=5),
            SamplingConfig("multinomial", top_p=0.9), SamplingConfig("temperature", 1.2, top_k=7, top_p=0.5)] * 4
    for trial in range(10):
        logits = torch.randn(len(cfgs), 65, generator=torch.Generator().manual_seed(trial)) * (1 + trial)
        alone = [torch.Generator().manual_seed(b % 5) for b in range(len(cfgs))]
        batched = [torch.Generator().manual_seed(b % 5) for b in range(len(cfgs))]
        want = [int(sample_next(logits[b:b + 1], c, g)[0]) for b, (c, g) in enumerate(zip(cfgs, alone))]
        assert sample_rows(logits, cfgs, batched) == want
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(alone, batched))
    assert sample_rows(torch.zeros(0, 65), [], []) == []


def test_seed_notebook_temperature_equals_softmax_of_scaled_logits():
    probs = F.softmax(LOGITS, dim=-1)
    for t in (0.3, 0.8, 1.0, 2.5):
        assert torch.allclose(temperature_from_probs(probs, t), F.softmax(LOGITS / t, dim=-1), atol=1e-6)
        assert torch.allclose(next_token_probs(LOGITS, SamplingConfig("temperature", t)),
                              F.softmax(LOGITS / t, dim=-1), atol=1e-6)


def test_tiny_temperature_equals_greedy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g)
    got = sample_next(logits, SamplingConfig("temperature", 1e-4), g)
    assert torch.equal(got, logits.argmax(-1))


def test_multinomial_frequencies_follow_softmax():
    g = torch.Generator().manual_seed(0)
    draws = sample_next(LOGITS.expand(20000, -1), SamplingConfig("multinomial"), g)
    freq = torch.bincount(draws, minlength=5).float() / 20000
    assert torch.allclose(freq, F.softmax(LOGITS[0], -1), atol=0.015)


def test_top_k_keeps_k_tokens():
    p = next_token_probs(LOGITS, SamplingConfig("multinomial", top_k=2))
    assert (p > 0).sum().item() == 2 and p[0, 0] > p[0, 1] > 0


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = F.softmax(LOGITS, -1)[0]  # ≈ [.52, .19, .12, .03, .07] → sorted cum .52, .71, .83 ...
    p = next_token_probs(LOGITS, SamplingConfig("multinomial", top_p=0.7))
    assert set(torch.nonzero(p[0]).flatten().tolist()) == {0, 1}
    kept = probs[[0, 1]] / probs[[0, 1]].sum()
    assert torch.allclose(p[0, [0, 1]], kept, atol=1e-6)
    # p = 1 keeps everything; a tiny p keeps the top token alone.
    assert (next_token_probs(LOGITS, SamplingConfig("multinomial", top_p=1.0)) > 0).all()
    assert (next_token_probs(LOGITS, SamplingConfig("multinomial", top_p=1e-6)) > 0).sum() == 1


def test_filtered_logits_are_minus_infinity():
    out = scaled_logits(LOGITS, SamplingConfig("multinomial", top_k=1))
    assert torch.isinf(out[0, 1:]).all() and out[0, 0] == 2.0


@pytest.mark.parametrize("kwargs,field", [
    ({"temperature": 0}, "temperature"), ({"temperature": -1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"top_k": 0}, "top_k"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"strategy": "beam"}, "strategy"),
])
def test_bad_settings_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**kwargs).validate()
