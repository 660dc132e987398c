"""The model: attention paths agree with each other and with SDPA, causality, config checks, init."""

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.model import GPT, Bigram, GPTConfig, build_model, estimate_params


def test_explicit_attention_equals_fused_path(tiny_gpt):
    tiny_gpt.eval()
    x = torch.randint(0, 40, (3, 16))
    fused = tiny_gpt(x)[0]
    tiny_gpt.set_explicit_attention(True)
    explicit = tiny_gpt(x)[0]
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_attention_weights_match_reference_sdpa(tiny_gpt):
    """The returned weights, applied to v, give exactly what F.scaled_dot_product_attention gives."""
    tiny_gpt.eval()
    attn = tiny_gpt.transformer.h[0].attn
    x = torch.randn(2, 10, 32)
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, 2, C // 2).transpose(1, 2) for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    _, att = attn(x, return_attn=True)
    assert torch.allclose(att @ v, ref, atol=1e-5)
    # Rows are distributions and the upper triangle (the future) gets exactly zero weight.
    assert torch.allclose(att.sum(-1), torch.ones(B, 2, T), atol=1e-6)
    assert (att.triu(1) == 0).all()


def test_return_attn_gives_one_map_per_layer(tiny_gpt):
    logits, loss, atts = tiny_gpt(torch.randint(0, 40, (1, 7)), return_attn=True)
    assert len(atts) == 2 and atts[0].shape == (1, 2, 7, 7)
    assert loss is None and logits.shape == (1, 7, 40)


def test_last_only_gives_the_last_position_of_the_full_forward(tiny_gpt):
    tiny_gpt.eval()
    x = torch.randint(0, 40, (3, 16))
    full = tiny_gpt(x)[0]
    assert torch.allclose(tiny_gpt(x, last_only=True)[0], full[:, -1:], atol=1e-5)
    tiny_gpt.set_explicit_attention(True)  # the explicit path too
    assert torch.allclose(tiny_gpt(x, last_only=True)[0], full[:, -1:], atol=1e-5)
    bigram = Bigram(GPTConfig(model="bigram", vocab_size=40))
    assert torch.equal(bigram(x, last_only=True)[0], bigram(x)[0][:, -1:])
    with pytest.raises(ValueError, match="last position"):
        tiny_gpt(x, targets=x, last_only=True)
    with pytest.raises(ValueError, match="last position"):
        tiny_gpt(x, return_attn=True, last_only=True)
    with pytest.raises(ValueError, match="eval mode"):
        tiny_gpt.train()(x, last_only=True)


def test_changing_a_future_token_never_changes_earlier_logits(tiny_gpt):
    tiny_gpt.eval()
    x = torch.randint(0, 40, (1, 16))
    y = x.clone()
    y[0, 9] = (y[0, 9] + 1) % 40
    a, b = tiny_gpt(x)[0], tiny_gpt(y)[0]
    assert torch.allclose(a[0, :9], b[0, :9], atol=1e-6)
    assert not torch.allclose(a[0, 9:], b[0, 9:])


def test_untrained_loss_is_near_log_vocab(tiny_gpt):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 40, (8, 16), generator=g), torch.randint(0, 40, (8, 16), generator=g)
    _, loss = tiny_gpt(x, y)
    assert abs(loss.item() - math.log(40)) < 0.1


def test_lm_head_is_tied_and_params_counted_once(tiny_gpt):
    assert tiny_gpt.lm_head.weight is tiny_gpt.transformer.wte.weight
    assert tiny_gpt.num_params() == estimate_params(tiny_gpt.config)


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50, n_layer=8, n_embd=256, n_head=4))
    std = m.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(m.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.001


@pytest.mark.parametrize("field,value,words", [
    ("n_head", 3, "divisible"), ("n_embd", 0, "n_embd"), ("n_layer", -1, "n_layer"),
    ("dropout", 1.0, "dropout"), ("dropout", -0.1, "dropout"), ("block_size", 0, "block_size"),
    ("vocab_size", 0, "vocab_size"), ("model", "rnn", "model"),
])
def test_bad_config_raises_naming_the_field(field, value, words):
    cfg = GPTConfig(**{field: value})
    with pytest.raises(ValueError, match=words):
        cfg.validate()


def test_limits_refuse_a_huge_model():
    from minigpt.limits import Limits
    with pytest.raises(ValueError, match="parameters"):
        GPTConfig(n_layer=24, n_embd=1536, n_head=12).validate(Limits(max_params=1_000_000))


def test_bigram_is_a_lookup_table():
    m = build_model(GPTConfig(vocab_size=10, model="bigram"))
    assert isinstance(m, Bigram) and m.num_params() == 100
    logits, _ = m(torch.tensor([[3, 3]]))
    assert torch.equal(logits[0, 0], logits[0, 1])
    assert torch.equal(logits[0, 0], m.token_logits.weight[3])


def test_sequence_longer_than_context_is_refused(tiny_gpt):
    with pytest.raises(ValueError, match="context"):
        tiny_gpt(torch.zeros(1, 17, dtype=torch.long))


def test_a_gpt_with_no_blocks_is_embeddings_into_the_head(tmp_path):
    """n_layer = 0 (the ladder's second rung): logits = (wte[token] + wpe[position]) · wteᵀ."""
    from minigpt.checkpoint import load_checkpoint, save_checkpoint
    from minigpt.generate import stream_ids
    from minigpt.sampling import SamplingConfig
    from minigpt.tokenizers import CharTokenizer
    cfg = GPTConfig(vocab_size=12, block_size=8, n_layer=0, n_head=1, n_embd=16, norm="none", mlp=False)
    torch.manual_seed(0)
    m = GPT(cfg).eval()
    assert len(m.transformer.h) == 0 and m.num_params() == estimate_params(cfg) == 12 * 16 + 8 * 16
    x = torch.tensor([[3, 1, 4, 1, 5]])
    wte, wpe = m.transformer.wte.weight, m.transformer.wpe.weight
    assert torch.allclose(m(x)[0][0], (wte[x[0]] + wpe[:5]) @ wte.T, atol=1e-6)
    assert torch.allclose(m(x, last_only=True)[0], m(x)[0][:, -1:], atol=1e-6)
    assert m(x, return_attn=True)[2] == []
    sampling = SamplingConfig("greedy")
    cached = [t for t, _ in stream_ids(m, [3, 1], 12, sampling, use_cache=True)]
    naive = [t for t, _ in stream_ids(m, [3, 1], 12, sampling, use_cache=False)]
    assert cached == naive and len(cached) == 12  # past the context too
    tok = CharTokenizer.from_text("abcdefghijkl")
    ck = load_checkpoint(save_checkpoint(tmp_path / "m.safetensors", m, tok))
    assert ck.config.n_layer == 0 and torch.equal(ck.model(x)[0], m(x)[0])


def test_only_the_gpt_may_have_no_blocks():
    with pytest.raises(ValueError, match="n_layer"):
        GPTConfig(model="bigram", n_layer=0).validate()
    with pytest.raises(ValueError, match="n_layer"):
        GPTConfig(n_layer=-1).validate()


@pytest.mark.parametrize("bias,rows", [(False, 1), (True, 4), (False, 8)])
def test_the_split_decoding_matmul_equals_f_linear(bias, rows):
    from minigpt.model import SPLIT_MIN_BYTES, Linear
    torch.manual_seed(0)
    lin = Linear(384, 1536, bias=bias)  # 2.4 MB fp32: past SPLIT_MIN_BYTES
    assert lin.weight.numel() * 4 >= SPLIT_MIN_BYTES
    x = torch.randn(rows, 1, 384)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            got = lin(x)
        assert hasattr(lin, "_split") and got.shape == (rows, 1, 1536)  # the split path ran
        want = F.linear(x, lin.weight, lin.bias)
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-5), (got - want).abs().max()
        plain = Linear(384, 1536, bias=bias).bfloat16()  # bf16 weights keep torch's matmul
        with torch.no_grad():
            plain(x.bfloat16())
        assert not hasattr(plain, "_split")
    finally:
        torch.set_num_threads(threads)


def test_the_split_blocks_follow_the_weights_and_training_is_untouched():
    from minigpt.model import Linear
    torch.manual_seed(0)
    lin = Linear(384, 1536, bias=False)
    x = torch.randn(1, 384)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            lin(x)
            lin.weight.mul_(-2.0)  # an optimizer step, in place: the blocks are made again
            assert torch.allclose(lin(x), F.linear(x, lin.weight), rtol=1e-5, atol=1e-4)
            lin.load_state_dict({"weight": torch.randn(1536, 384)})  # a loaded checkpoint
            assert torch.allclose(lin(x), F.linear(x, lin.weight), rtol=1e-5, atol=1e-4)
        y = lin(x)  # with gradients: the plain matmul, and the gradient reaches the weight
        y.sum().backward()
        assert torch.allclose(lin.weight.grad, x.expand(1536, 384))
    finally:
        torch.set_num_threads(threads)


def test_a_wide_gpt_decodes_with_the_cache_as_it_recomputes():
    """A 6 × 384 model (its matrices take the split path in cached steps): greedy decoding with the KV
    cache picks the same tokens as recomputing, and the logits agree to float rounding."""
    from minigpt.model import KVCache
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=6, n_embd=384)).eval()
    idx = torch.randint(0, 65, (2, 5))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            cache = KVCache(m.config, 2, "cpu", torch.float32)
            logits = m(idx, kv_cache=cache, last_only=True)[0]
            seq = idx
            for _ in range(10):
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
                full = m(seq)[0][:, -1]
                logits = m(nxt, kv_cache=cache, last_only=True)[0]
                assert torch.allclose(logits[:, -1], full, atol=1e-4), (logits[:, -1] - full).abs().max()
    finally:
        torch.set_num_threads(threads)
