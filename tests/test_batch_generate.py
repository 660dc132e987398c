"""Batched decoding: one batch for several strategies gives what each gives alone, in fewer forwards."""

import pytest
import torch

from minigpt.batch_generate import generate_batch, stream_ids_batch
from minigpt.generate import generate, make_generator, stream_ids
from minigpt.model import Bigram, GPTConfig
from minigpt.sampling import SamplingConfig

from conftest import SHORT_TEXT, CountingForward, forward_sizes

STRATEGIES = [SamplingConfig("greedy"), SamplingConfig("multinomial"), SamplingConfig("temperature", 0.5),
              SamplingConfig("temperature", 2.0), SamplingConfig("temperature", 1.0, top_k=5),
              SamplingConfig("temperature", 0.9, top_p=0.8), SamplingConfig("multinomial", top_k=3, top_p=0.5)]


def _alone(model, tok, prompt, n, sampling, seed, use_cache=True):
    return list(generate(model, tok, prompt, n, SamplingConfig(**sampling.to_dict()), seed=seed,
                         use_cache=use_cache, top_n=5))


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("prompt,n", [("First", 8), ("Speak", 40), (SHORT_TEXT[:30], 25), ("", 12)])
def test_each_column_is_what_it_gives_alone_token_for_token(gpt, tok, prompt, n, use_cache):
    # block_size 16: "Speak" + 40 tokens and the 30-character prompt run past the context window.
    batch = list(generate_batch(gpt, tok, prompt, n, [SamplingConfig(**s.to_dict()) for s in STRATEGIES], seed=7,
                                use_cache=use_cache, top_n=5))
    assert len(batch) == n and all(len(row) == len(STRATEGIES) for row in batch)
    for b, sampling in enumerate(STRATEGIES):
        alone = _alone(gpt, tok, prompt, n, sampling, seed=7, use_cache=use_cache)
        column = [row[b] for row in batch]
        assert [s.id for s in column] == [s.id for s in alone], sampling
        assert "".join(s.text for s in column) == "".join(s.text for s in alone)
        for a, c in zip(alone, column):
            assert c.top_ids == a.top_ids or torch.allclose(torch.tensor(c.top_probs), torch.tensor(a.top_probs),
                                                            atol=1e-5)
            assert abs(a.prob - c.prob) < 1e-5 and abs(a.logprob - c.logprob) < 1e-4


def test_the_same_strategy_twice_gives_the_same_column_and_seeds_matter(gpt, tok):
    cfgs = [SamplingConfig("multinomial"), SamplingConfig("multinomial")]
    rows = list(generate_batch(gpt, tok, "All", 30, cfgs, seed=3))
    assert [r[0].id for r in rows] == [r[1].id for r in rows]
    other = list(generate_batch(gpt, tok, "All", 30, cfgs[:1], seed=4))
    assert [r[0].id for r in rows] != [r[0].id for r in other]


def test_bigram_batches_too(tok):
    torch.manual_seed(1)
    model = Bigram(GPTConfig(vocab_size=tok.vocab_size, block_size=8, model="bigram")).eval()
    rows = list(generate_batch(model, tok, "Sp", 20, [SamplingConfig("greedy"), SamplingConfig("temperature", 1.5)],
                               seed=2))
    for b, cfg in enumerate([SamplingConfig("greedy"), SamplingConfig("temperature", 1.5)]):
        assert [r[b].id for r in rows] == [s.id for s in _alone(model, tok, "Sp", 20, cfg, seed=2)]


def test_one_forward_a_step_for_all_strategies(gpt, tok):
    spy = CountingForward(gpt)
    n = 12  # stays inside the context: prefill once, then one batched step a token
    list(generate_batch(gpt, tok, "All", n, STRATEGIES, seed=1))
    assert len(spy.batches) == n  # 1 prefill + (n - 1) steps, whatever the number of strategies
    assert spy.batches[0] == 1 and set(spy.batches[1:]) == {len(STRATEGIES)}
    spy.batches.clear()
    for s in STRATEGIES:  # one at a time on the eager model (the decoding kernel would skip forward)
        list(generate(gpt, tok, "All", n, s, seed=1, kernel=False))
    assert len(spy.batches) == n * len(STRATEGIES)


def test_stream_ids_batch_matches_stream_ids(gpt):
    ids = [1, 2, 3]
    cfgs = [SamplingConfig("temperature", 1.0), SamplingConfig("greedy")]
    rows = list(stream_ids_batch(gpt, ids, 30, cfgs, [make_generator(5), make_generator(5)]))
    for b, cfg in enumerate(cfgs):
        alone = list(stream_ids(gpt, ids, 30, cfg, make_generator(5)))
        assert [r[0][b] for r in rows] == [t for t, _ in alone]
        for (_, lb), (_, la) in zip(rows, alone):
            assert torch.allclose(lb[b], la, atol=1e-5)


def test_refuses_mismatched_generators(gpt):
    with pytest.raises(ValueError, match="one generator per"):
        next(stream_ids_batch(gpt, [1], 3, [SamplingConfig()], []))


def test_session_compare_decodes_one_batch_and_matches_each_alone(tmp_path, tok, gpt):
    from minigpt.checkpoint import save_checkpoint
    from minigpt.limits import Limits
    from minigpt.playground import Playground
    from minigpt.views import sampling_columns
    shipped = save_checkpoint(tmp_path / "shipped.safetensors", gpt, tok, {"iters": 0})
    s = Playground(Limits(), shipped_path=shipped, device="cpu").session("batch")
    model = s.inference_model().model
    spy = CountingForward(model)
    cols = sampling_columns(top_k=5, top_p=0.9)  # six strategies
    n = 40  # past the context window (16)
    views = list(s.compare("First", n, 11, cols))
    spy.handle.remove()
    final = views[-1]
    assert len(final) == 6 and all(c["done"] and c["n"] == n for c in final)
    assert all(len(v) == 6 for v in views)  # every yield: all the columns, as before
    # One forward a token for all six; past the context (16) each distinct window once.
    rows = [(tok.encode("First"), s.comparison[name]["ids"]) for name, _ in cols]
    assert spy.batches == [1] + [6] * 11 + forward_sizes(16, rows)[11:]
    for (name, sampling), col in zip(cols, final):
        alone = list(generate(model, tok, "First", n, SamplingConfig(**sampling.to_dict()), seed=11, top_n=5))
        assert col["text"] == "".join(a.text for a in alone), name
        assert s.comparison[name]["ids"] == [a.id for a in alone]
