"""Tokenizers: round trips, the unknown-character error, GPT-2 BPE offline, JSON round trips."""

import pytest

from minigpt.data import encode_ids, load_text
from minigpt.tokenizers import (BPETokenizer, CharTokenizer, UnknownCharactersError, build_tokenizer,
                                gpt2_encoding, tokenizer_from_dict)


def test_char_vocab_of_tiny_shakespeare_is_65():
    tok = CharTokenizer.from_text(load_text("shakespeare"))
    assert tok.vocab_size == 65 and tok.chars[0] == "\n" and tok.chars[1] == " "


def test_char_round_trip(small_text):
    tok = CharTokenizer.from_text(small_text)
    assert tok.decode(tok.encode(small_text)) == small_text


def test_unknown_characters_are_named(small_text):
    tok = CharTokenizer.from_text(small_text)
    with pytest.raises(UnknownCharactersError, match="'Z'") as e:
        tok.encode("Zebra 🦓")
    assert set(e.value.chars) == {"Z", "🦓", "b"} - set(small_text)
    assert tok.unknown("Zebra") == sorted(set("Zebra") - set(small_text))


def test_encoded_ids_are_the_tokenizers_as_a_tensor(small_text):
    """encode_ids (one byte per character for a vocabulary of up to 256) gives encode's ids, and the
    same error for an unknown character; above 256 characters and for BPE it is encode as it is."""
    import torch
    text = small_text + "é—🦓\u00ff\x00"  # characters beyond one byte and at its edges
    for tok in (CharTokenizer.from_text(text), CharTokenizer.from_text(text + "".join(map(chr, range(0x400, 0x500)))),
                build_tokenizer("gpt2", text)):
        ids = encode_ids(tok, text)
        assert ids.dtype == torch.long and ids.tolist() == tok.encode(text)
        assert encode_ids(tok, "").tolist() == []
    tok = CharTokenizer.from_text(small_text)
    with pytest.raises(UnknownCharactersError, match="'Z'"):
        encode_ids(tok, small_text + "Zebra")


def test_gpt2_bpe_works_offline_from_the_data_dir():
    enc = gpt2_encoding()
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    assert enc.encode_ordinary("Hello world") == [15496, 995]  # GPT-2's well-known ids


def test_compact_bpe_vocabulary_is_small_and_round_trips(small_text):
    tok = BPETokenizer.from_text(small_text)
    assert tok.vocab_size < 100
    ids = tok.encode(small_text)
    assert max(ids) < tok.vocab_size and tok.decode(ids) == small_text
    with pytest.raises(UnknownCharactersError):
        tok.encode("photosynthesis")


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_tokenizer_json_round_trip(kind, small_text):
    tok = build_tokenizer(kind, small_text)
    again = tokenizer_from_dict(tok.to_dict())
    assert again.encode(small_text) == tok.encode(small_text) and again.vocab_size == tok.vocab_size


def test_unknown_tokenizer_kind():
    with pytest.raises(ValueError, match="tokenizer"):
        build_tokenizer("wordpiece", "abc")
