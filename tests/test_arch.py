"""Architecture switches: every combination generates the same with and without the KV cache,
parameter counts follow the formulas, the defaults are the old model, checkpoints carry the
switches; and the per-block diagnostics show vanishing gradients where the Concepts tab says."""

import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from minigpt.checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
from minigpt.data import load_text, split_ids
from minigpt.diagnostics import block_forward_stats, block_grad_norms
from minigpt.generate import stream_ids
from minigpt.model import (ACTIVATIONS, GPT, NORMS, GPTConfig, TokenBatchNorm, arch_summary, build_model,
                           estimate_params, new_kv_cache)
from minigpt.sampling import SamplingConfig
from minigpt.tokenizers import CharTokenizer
from minigpt.train import Eval, Run, TrainConfig, train

from conftest import ROOT

SHIPPED = ROOT / "checkpoints" / "shakespeare-char.safetensors"
TINY = dict(vocab_size=20, block_size=12, n_layer=2, n_head=2, n_embd=16)


def _combos():
    for norm, residual, mlp, pos_emb, act in itertools.product(NORMS, (True, False), (True, False), (True, False),
                                                               ACTIVATIONS):
        if mlp or act == "gelu":  # no MLP, no activation to choose
            yield dict(norm=norm, residual=residual, mlp=mlp, pos_emb=pos_emb, activation=act)


def _tiny(seed=0, **switches):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY, **switches))
    for m in model.modules():  # give BatchNorm running statistics that are not the identity
        if isinstance(m, TokenBatchNorm):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on one thread: on a busy 2-core machine two threads mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shakespeare():
    text = load_text("shakespeare")
    tok = CharTokenizer.from_text(text)
    return tok, split_ids(torch.tensor(tok.encode(text)))


# ---- the model ----------------------------------------------------------------------------------

def test_every_combination_generates_the_same_with_and_without_the_cache():
    combos = list(_combos())
    assert len(combos) == 80
    x = torch.randint(0, 20, (1, 12), generator=torch.Generator().manual_seed(1))
    greedy = SamplingConfig("greedy")
    for switches in combos:
        model = _tiny(**switches)
        with torch.no_grad():
            full = model(x)[0]
            cache = new_kv_cache(model)
            parts = [model(x[:, :5], kv_cache=cache)[0]] + [model(x[:, i:i + 1], kv_cache=cache)[0]
                                                            for i in range(5, 12)]
        assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5), switches
        # Past the context window too (the cache is full and the window slides).
        cached = [t for t, _ in stream_ids(model, x[0, :4].tolist(), 20, greedy)]
        naive = [t for t, _ in stream_ids(model, x[0, :4].tolist(), 20, greedy, use_cache=False)]
        assert cached == naive, switches


def test_every_combination_gives_the_full_forwards_last_logits_with_last_only():
    """last_only (generation) equals the full forward's last position, with and without the cache,
    and fills the cache as the full forward does."""
    x = torch.randint(0, 20, (3, 12), generator=torch.Generator().manual_seed(2))
    for switches, bias in itertools.product(_combos(), (False, True)):
        model = _tiny(bias=bias, **switches)
        with torch.no_grad():
            full = model(x)[0]
            last = model(x, last_only=True)[0]
            cache, ref = new_kv_cache(model, 3), new_kv_cache(model, 3)
            parts = [model(x[:, :7], kv_cache=cache, last_only=True)[0],  # the prefill
                     model(x[:, 7:9], kv_cache=cache, last_only=True)[0],  # two new tokens after it
                     model(x[:, 9:10], kv_cache=cache, last_only=True)[0]]
            model(x[:, :10], kv_cache=ref)
        assert last.shape == (3, 1, 20) and torch.allclose(last, full[:, -1:], atol=1e-5), (switches, bias)
        for part, at in zip(parts, (6, 8, 9)):
            assert part.shape == (3, 1, 20) and torch.allclose(part, full[:, at:at + 1], atol=1e-5), (switches, bias)
        assert cache.pos == ref.pos == 10
        assert torch.allclose(cache.k, ref.k, atol=1e-5) and torch.allclose(cache.v, ref.v, atol=1e-5)


def test_parameter_counts_follow_the_formulas():
    V, T, L, C = 20, 12, 2, 16
    attn, mlp = 4 * C * C, 8 * C * C
    standard = V * C + T * C + L * (2 * C + attn + mlp) + C
    assert estimate_params(GPTConfig(**TINY)) == standard
    expected = {
        "batch": standard, "rms": standard, "none": standard - (2 * L + 1) * C,
        "residual": standard, "mlp": standard - L * (C + mlp), "pos_emb": standard - T * C,
    }
    for name, want in expected.items():
        switches = {"norm": name} if name in NORMS else {name: False}
        cfg = GPTConfig(**TINY, **switches)
        assert estimate_params(cfg) == want == GPT(cfg).num_params(), name
    for switches in _combos():  # and every combination, with biases too
        for bias in (False, True):
            cfg = GPTConfig(**TINY, bias=bias, **switches)
            assert GPT(cfg).num_params() == estimate_params(cfg), (switches, bias)
            assert GPT(cfg).num_params(non_embedding=True) == estimate_params(cfg, non_embedding=True)
    with_bias = GPTConfig(**TINY, bias=True)
    assert estimate_params(with_bias) - estimate_params(GPTConfig(**TINY, bias=True, norm="rms")) == (2 * L + 1) * C


def test_switched_off_parts_have_no_parameters():
    names = set(GPT(GPTConfig(**TINY, pos_emb=False, mlp=False, norm="none")).state_dict())
    assert not any("wpe" in n or "mlp" in n or "ln_" in n for n in names)
    bn = set(GPT(GPTConfig(**TINY, norm="batch")).state_dict())
    assert {"transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.running_mean", "transformer.ln_f.running_var"} <= bn


def test_a_checkpoint_written_before_the_switches_loads_as_the_standard_gpt(tmp_path):
    """A file whose config has no switch keys (as every file written before them): the same tensor
    names and shapes as today's default model, loaded as the standard GPT, predicting the same."""
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefghij ")
    model = GPT(GPTConfig(**{**TINY, "vocab_size": tok.vocab_size})).eval()
    path = save_checkpoint(tmp_path / "old.safetensors", model, tok, {"iters": 0})
    header, metadata = read_header(path)
    config = json.loads(metadata["config"])
    old = {k: v for k, v in config.items() if k not in ("norm", "residual", "mlp", "pos_emb", "activation")}
    save_file(load_file(path), path, metadata={**metadata, "config": json.dumps(old)})  # as written before
    assert "norm" not in json.loads(read_header(path)[1]["config"])
    ck = load_checkpoint(path)
    assert arch_summary(ck.config) == "standard GPT"
    assert {k: list(v.shape) for k, v in ck.model.state_dict().items() if k != "lm_head.weight"} == \
        {k: v["shape"] for k, v in header.items()}
    x = torch.tensor([tok.encode("abcdefghij")])
    with torch.no_grad():
        assert torch.equal(ck.model(x)[0], model(x)[0])


def test_the_shipped_checkpoint_is_a_standard_gpt_that_has_learned():
    ck = load_checkpoint(SHIPPED)
    assert arch_summary(ck.config) == "standard GPT"
    text = load_text("shakespeare")
    T = ck.config.block_size
    ids = torch.tensor(ck.tokenizer.encode(text[-20000:]))
    x, y = ids[:T * 8].view(8, T), ids[1:T * 8 + 1].view(8, T)
    with torch.no_grad():
        assert ck.model(x, y)[1].item() < 2.0  # untrained: 4.17; its full-validation loss is in its run card


@pytest.mark.slow
def test_the_shipped_checkpoint_scores_what_its_run_card_says():
    """Loaded into today's model: the very same full-validation loss as its run card says."""
    from minigpt.evaluate import full_val_loss, val_split
    ck = load_checkpoint(SHIPPED)
    ids = torch.tensor(ck.tokenizer.encode(load_text("shakespeare")))
    assert full_val_loss(ck.model, val_split(ids)) == pytest.approx(ck.training["val_loss"], abs=1e-4)


@pytest.mark.parametrize("field,value,words", [
    ("norm", "group", "norm must be one of layer, batch, rms, none"),
    ("norm", None, "norm must be"),
    ("activation", "swish", "activation must be one of gelu, relu, sigmoid, tanh"),
    ("residual", "yes", "residual must be true or false"),
    ("mlp", 1, "mlp must be true or false"),
    ("pos_emb", None, "pos_emb must be true or false"),
])
def test_bad_switches_raise_naming_the_field(field, value, words):
    with pytest.raises(ValueError, match=words):
        GPTConfig(**{field: value}).validate()


def test_combinations_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="bigram.*switches apply to the GPT only"):
        GPTConfig(model="bigram", norm="batch").validate()
    with pytest.raises(ValueError, match="activation 'relu' needs the MLP"):
        GPTConfig(mlp=False, activation="relu").validate()
    build_model(GPTConfig(model="bigram"))  # the bigram with the default switches is fine


def test_batchnorm_sees_the_future_in_training_and_not_in_eval():
    """Honest BatchNorm: training-mode statistics over batch × time let a future token change the
    past's outputs; eval mode uses running statistics, and the model is causal again."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, norm="batch"))
    x = torch.randint(0, 20, (2, 12))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 20
    model.train()
    assert not torch.allclose(model(x)[0][:, :-1], model(y)[0][:, :-1])
    model.eval()
    assert torch.allclose(model(x)[0][:, :-1], model(y)[0][:, :-1], atol=1e-6)


def test_arch_summary_names_every_switch_that_differs():
    assert arch_summary(GPTConfig()) == "standard GPT"
    assert arch_summary(GPTConfig(residual=False, activation="sigmoid")) == "no residual, sigmoid MLP"
    assert arch_summary(GPTConfig(norm="batch", mlp=False, pos_emb=False)) == \
        "BatchNorm, no MLP, no position embeddings"
    assert arch_summary(GPTConfig(norm="rms")) == "RMSNorm" and arch_summary(GPTConfig(norm="none")) == "no norm"


# ---- checkpoints --------------------------------------------------------------------------------

def test_checkpoint_round_trips_the_switches(tmp_path):
    tok = CharTokenizer.from_text("abcdefghijklmnopqrst")
    model = GPT(GPTConfig(**TINY, norm="batch", residual=False, pos_emb=False, activation="tanh"))
    model.train()
    model(torch.randint(0, 20, (4, 12)))  # move BatchNorm's running statistics off their start
    path = save_checkpoint(tmp_path / "m.safetensors", model, tok)
    ck = load_checkpoint(path)
    assert ck.config == model.config and arch_summary(ck.config) == "BatchNorm, no residual, tanh MLP, " \
                                                                     "no position embeddings"
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k].float(), v.float()), k
    x = torch.randint(0, 20, (2, 12))
    model.eval()
    assert torch.equal(ck.model.eval()(x)[0], model(x)[0])


@pytest.mark.parametrize("field,value", [("norm", "group"), ("activation", "swish"), ("residual", "no"),
                                         ("pos_emb", 0)])
def test_checkpoint_with_a_bad_switch_is_refused(tmp_path, field, value):
    tok = CharTokenizer.from_text("abcdefghijklmnopqrst")
    good = save_checkpoint(tmp_path / "m.safetensors", GPT(GPTConfig(**TINY)), tok)
    _, metadata = read_header(good)
    config = json.loads(metadata["config"])
    config[field] = value
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata={**metadata, "config": json.dumps(config)})
    with pytest.raises(CheckpointError, match=f"config is not usable: {field} must be"):
        load_checkpoint(bad)


# ---- diagnostics --------------------------------------------------------------------------------

def test_diagnostics_measure_each_block():
    model = _tiny()
    x = torch.randint(0, 20, (3, 12))
    model.train()
    model(x, x)[1].backward()
    grads = block_grad_norms(model)
    want = [math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in b.parameters())) for b in model.transformer.h]
    assert grads == pytest.approx(want, rel=1e-9)
    stds, entropies = block_forward_stats(model, x)
    assert model.training  # the mode is restored
    model.eval()
    h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(12))
    _, _, atts = model(x, return_attn=True)
    for i, block in enumerate(model.transformer.h):
        h = block(h)[0]
        assert stds[i] == pytest.approx(h.std().item(), rel=1e-5)
        p = atts[i][:, :, 1:]
        assert entropies[i] == pytest.approx(-(p * p.clamp_min(1e-30).log()).sum(-1).mean().item(), rel=1e-5)
        assert 0 < entropies[i] < math.log(12)
    assert block_grad_norms(build_model(GPTConfig(vocab_size=5, model="bigram"))) == []


def _evals(tok, splits, steps, every, **switches):
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_head=2, n_embd=32, **switches)
    run = Run.create(cfg, tok, splits, device="cpu", dtype="float32", seed=0)
    events = list(train(run, TrainConfig(max_iters=steps, eval_interval=every, eval_iters=1, sample_every=0,
                                         batch_size=32, lr=1e-2, warmup_iters=10)))
    return [e for e in events if isinstance(e, Eval)]


VANISHING = dict(n_layer=8, activation="sigmoid", residual=False, norm="none")


def test_vanishing_gradients_in_the_real_network(shakespeare):
    """8 blocks, sigmoid, no residual, no norm: the first block's gradient is orders of magnitude
    below the last's. The standard GPT of the same depth keeps them within about one order of
    magnitude (measured: the first block is the largest, 10-14x the smallest; see docs/arch-table.md)."""
    tok, splits = shakespeare
    (vanishing,) = _evals(tok, splits, 10, 10, **VANISHING)
    (standard,) = _evals(tok, splits, 10, 10, n_layer=8)
    g = vanishing.layer_grad_norms
    assert len(g) == 8 and len(vanishing.layer_act_std) == 8 and len(vanishing.layer_attn_entropy) == 8
    assert g[-1] > 0 and g[0] < 1e-6 * g[-1], g
    g = standard.layer_grad_norms
    assert min(g) > 0 and max(g) / min(g) < 20, g


@pytest.mark.slow
def test_without_residuals_and_norms_the_loss_falls_far_more_slowly(shakespeare):
    """The same 300 steps: the standard GPT keeps learning; the vanishing one stalls near the
    unigram loss (only its last blocks learn) after its first steps."""
    tok, splits = shakespeare
    v1, v2 = _evals(tok, splits, 300, 150, **VANISHING)
    s1, s2 = _evals(tok, splits, 300, 150, n_layer=8)
    assert s2.val_loss < v2.val_loss - 0.3, (s2.val_loss, v2.val_loss)
    assert s1.val_loss - s2.val_loss > 3 * max(v1.val_loss - v2.val_loss, 0.01), (s1, s2, v1, v2)


def test_layer_figures_build():
    from minigpt.layer_plots import layer_act_figure, layer_grad_figure
    evals = [Eval(iter=i, train_loss=3.0, val_loss=3.1, elapsed=1.0, layer_grad_norms=[0.0, 1e-20 * i, 1e-3, 0.1],
                  layer_act_std=[0.04, 0.05, 0.4, 1.4], layer_attn_entropy=[2.6] * 4) for i in (1, 2, 3)]
    fig = layer_grad_figure(evals)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "first / last = 0" in ax.get_title()
    assert len(ax.lines) == 3 and list(ax.lines[-1].get_xdata()) == [1, 2, 3, 4]
    fig = layer_act_figure([{"iter": 5, "layer_act_std": [1.0, 2.0], "layer_grad_norms": []}])
    assert list(fig.axes[0].lines[-1].get_ydata()) == [1.0, 2.0]
    assert layer_grad_figure([]).axes[0].texts  # nothing yet: a note, not an error


# ---- the command line ---------------------------------------------------------------------------

def test_cli_trains_with_switches_logs_diagnostics_and_info_shows_them(tmp_path, capsys):
    from conftest import SMALL_TEXT

    from minigpt.cli import main

    text = tmp_path / "text.txt"
    text.write_text(SMALL_TEXT)
    out = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(text), "--n-layer", "2", "--n-embd", "16", "--n-head", "1",
                 "--block-size", "16", "--max-iters", "20", "--eval-interval", "10", "--eval-iters", "1",
                 "--out", str(out), "--log-json", "--norm", "rms", "--no-residual", "--no-pos-emb",
                 "--activation", "tanh"]) == 0
    evals = [e for e in map(json.loads, capsys.readouterr().out.splitlines()) if e.get("event") == "eval"]
    assert len(evals) == 2
    for e in evals:
        assert all(len(e[k]) == 2 for k in ("layer_grad_norms", "layer_act_std", "layer_attn_entropy"))
        assert all(v > 0 for v in e["layer_grad_norms"] + e["layer_act_std"])
        assert all(0 < v < math.log(16) for v in e["layer_attn_entropy"])
    assert main(["info", str(out)]) == 0
    assert "arch       RMSNorm, no residual, tanh MLP, no position embeddings" in capsys.readouterr().out
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["norm"] == "rms" and info["config"]["pos_emb"] is False
    assert info["training"]["architecture"] == info["architecture"]
    assert main(["train", "--data", str(text), "--no-mlp", "--activation", "relu", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: activation 'relu' needs the MLP: without it (mlp off) there is no activation to change"]
    with pytest.raises(SystemExit) as e:  # argparse: exit 2 with the choices
        main(["train", "--norm", "group"])
    assert e.value.code == 2 and "invalid choice: 'group'" in capsys.readouterr().err
