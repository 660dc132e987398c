"""Generation: the KV cache gives the same logits as recomputing, before and after the cache fills."""

import torch

from minigpt.generate import generate, generate_naive, perplexity, stream_ids
from minigpt.model import GPT, GPTConfig
from minigpt.sampling import SamplingConfig
from minigpt.tokenizers import CharTokenizer


def _pairs(model, ids, n, cache, seed=0):
    g = torch.Generator().manual_seed(seed)
    return list(stream_ids(model, ids, n, SamplingConfig("temperature", 1.0), g, use_cache=cache))


def test_cached_logits_equal_recompute_every_step_past_the_window(tiny_gpt):
    # 5 prompt tokens + 40 new ones run well past block_size = 16.
    ids = [1, 2, 3, 4, 5]
    cached = _pairs(tiny_gpt, ids, 40, cache=True)
    g = torch.Generator().manual_seed(0)
    naive = generate_naive(tiny_gpt, ids, 40, SamplingConfig("temperature", 1.0), g)
    assert [t for t, _ in cached] == [t for t, _ in naive]
    for (_, a), (_, b) in zip(cached, naive):
        assert torch.allclose(a, b, atol=1e-4)


def test_long_prompt_is_cropped_to_the_context(tiny_gpt):
    long_prompt = list(range(40))  # longer than block_size 16
    a = _pairs(tiny_gpt, long_prompt, 5, cache=True)
    b = _pairs(tiny_gpt, long_prompt[-16:], 5, cache=False)
    assert [t for t, _ in a] == [t for t, _ in b]


def test_generate_streams_text_with_probabilities(tiny_gpt, small_text):
    tok = CharTokenizer.from_text(small_text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    steps = list(generate(model, tok, "First", 30, SamplingConfig("greedy"), seed=1, top_n=5))
    assert len(steps) == 30
    for s in steps:
        assert s.text == tok.decode([s.id]) and 0 < s.prob <= 1
        assert s.top_ids[0] == s.id  # greedy takes the most likely token
        assert len(s.top_probs) == 5 and s.top_probs == sorted(s.top_probs, reverse=True)
    ll, ppl = perplexity(steps)
    assert abs(ppl - torch.exp(torch.tensor(-ll)).item()) < 1e-3


def test_same_seed_same_text(tiny_gpt, small_text):
    tok = CharTokenizer.from_text(small_text)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    run = lambda seed: "".join(s.text for s in generate(model, tok, "Sp", 50, SamplingConfig("multinomial"), seed=seed))
    assert run(7) == run(7)
    assert run(7) != run(8)
