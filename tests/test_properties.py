"""Property-based tests (hypothesis): tokenizer round trips, sampling settings, corrupted checkpoints."""

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minigpt.model import GPT, GPTConfig
from minigpt.sampling import SamplingConfig, next_token_probs, sample_next
from minigpt.tokenizers import BPETokenizer, CharTokenizer, UnknownCharactersError

ALPHABET = "abcdefghijklmnopqrstuvwxyz ABC\n!?',.;:-éü🦓"
CHAR_TOK = CharTokenizer.from_text(ALPHABET)


@given(st.text(alphabet=ALPHABET, max_size=200))
def test_char_round_trip_on_any_text_in_the_vocabulary(text):
    assert CHAR_TOK.decode(CHAR_TOK.encode(text)) == text


@given(st.text(max_size=50))
def test_char_encode_either_round_trips_or_names_the_unknown(text):
    try:
        ids = CHAR_TOK.encode(text)
    except UnknownCharactersError as e:
        assert e.chars and all(c not in ALPHABET for c in e.chars)
        assert set(e.chars) == set(CHAR_TOK.unknown(text))
    else:
        assert CHAR_TOK.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=120))
def test_full_bpe_round_trips_any_unicode(text):
    tok = BPETokenizer()
    assert tok.decode(tok.encode(text)) == text


@settings(deadline=None)
@given(strategy=st.sampled_from(["greedy", "multinomial", "temperature"]),
       temperature=st.floats(min_value=0.05, max_value=20),
       top_k=st.one_of(st.none(), st.integers(1, 50)),
       top_p=st.one_of(st.none(), st.floats(min_value=0.01, max_value=1.0)),
       seed=st.integers(0, 2**31))
def test_any_valid_setting_gives_a_distribution_and_a_token_it_allows(strategy, temperature, top_k, top_p, seed):
    cfg = SamplingConfig(strategy, temperature, top_k, top_p).validate()
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(seed)) * 5
    probs = next_token_probs(logits, cfg)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5) and (probs >= 0).all()
    tokens = sample_next(logits, cfg, torch.Generator().manual_seed(seed))
    assert (probs.gather(1, tokens[:, None]) > 0).all()
    if top_k is not None and strategy != "greedy":
        assert ((probs > 0).sum(-1) <= top_k).all()


@given(temperature=st.one_of(st.floats(max_value=0), st.just(float("nan")), st.just(float("inf"))))
def test_invalid_temperatures_are_refused(temperature):
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig("temperature", temperature).validate()


@pytest.fixture(scope="module")
def checkpoint_bytes_(tmp_path_factory):
    tok = CharTokenizer.from_text(ALPHABET)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8))
    path = save_checkpoint(tmp_path_factory.mktemp("ck") / "m.safetensors", model, tok, {"iters": 1})
    return path.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_checkpoints_raise_checkpoint_error_or_load_cleanly(checkpoint_bytes_, tmp_path, data):
    raw = bytearray(checkpoint_bytes_)
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice", "header"]))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    elif kind == "truncate":
        raw = raw[: rng.randrange(len(raw))]
    elif kind == "splice":
        at = rng.randrange(len(raw))
        raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:  # damage inside the JSON header, where a parser is most likely to crash
        n = int.from_bytes(raw[:8], "little")
        for _ in range(rng.randint(1, 4)):
            raw[8 + rng.randrange(n)] = rng.choice(b'{}[]":,0123456789abcdefxyz\\ ')
    path = tmp_path / "c.safetensors"
    path.write_bytes(bytes(raw))
    try:
        ck = load_checkpoint(path)
    except CheckpointError as e:
        assert str(e)
    else:  # a flip inside weight data can leave a valid file (odd but finite weights): it must run
        logits, _ = ck.model(torch.zeros(1, 4, dtype=torch.long))
        assert logits.shape == (1, 4, ck.config.vocab_size)
