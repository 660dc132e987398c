"""The Concepts experiments against theory: variance d vs 1, peaky softmax, vanishing and exploding
gradients, what LayerNorm and BatchNorm normalise; plus validation, determinism, figures and the CLI."""

import argparse
import io
import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from minigpt import experiment_plots as P
from minigpt import experiments as E
from minigpt import experiments_cli


# ---- softmax scaling ---------------------------------------------------------------------------------

def test_score_variance_is_d_unscaled_and_1_scaled():
    r = E.softmax_scaling(dims=[2, 16, 128, 1024], pairs=20_000, rows=8, seed=1)
    for d, unscaled, scaled in zip(r.dims, r.score_var_unscaled, r.score_var_scaled):
        assert unscaled == pytest.approx(d, rel=0.10)
        assert scaled == pytest.approx(1.0, rel=0.10)


def test_softmax_turns_peaky_with_d_unless_scaled():
    r = E.softmax_scaling(dims=[2, 8, 32, 128, 512], pairs=100, rows=256, seed=0)
    mu, ms = r.max_prob_unscaled, r.max_prob_scaled
    assert all(b > a for a, b in zip(mu, mu[1:])), mu
    assert mu[0] < 0.3 and mu[-1] > 0.85
    assert max(ms) - min(ms) < 0.05, ms
    eu, es = r.entropy_unscaled, r.entropy_scaled
    assert all(b < a for a, b in zip(eu, eu[1:])) and eu[-1] < 0.5
    assert max(es) - min(es) < 0.2 and max(es) < r.uniform_entropy == pytest.approx(math.log(r.seq_len))
    assert r.uniform_max_prob == pytest.approx(1 / r.seq_len)


def test_example_row_times_8_by_the_formula():
    z = [0.1, -0.2, 0.3, -0.2, 0.5]
    r = E.softmax_scaling(dims=[4], pairs=100, rows=1, example_logits=z, example_scale=8)
    for scale, probs, entropy in ((1, r.example_probs, r.example_entropy),
                                  (8, r.example_probs_scaled, r.example_entropy_scaled)):
        e = [math.exp(scale * v) for v in z]
        expected = [v / sum(e) for v in e]
        assert probs == pytest.approx(expected, abs=1e-12)
        assert entropy == pytest.approx(-sum(p * math.log(p) for p in expected), abs=1e-12)
    assert max(r.example_probs_scaled) == pytest.approx(0.8000, abs=1e-4)  # the notebook's 0.8000
    assert r.example_entropy_scaled < r.example_entropy


# ---- gradients ---------------------------------------------------------------------------------------

def test_sigmoid_vanishes_relu_kaiming_and_residual_do_not():
    r = E.gradient_flow(depth=20, activations=["sigmoid", "relu"], init="default", sgd_steps=1)
    sig = r.grad_norms["sigmoid"]
    assert len(sig) == 20 and r.layers == list(range(1, 21))
    assert sig[0] * 1000 <= sig[-1]
    assert r.first_last_ratio["sigmoid"] == pytest.approx(sig[0] / sig[-1])
    kaiming = E.gradient_flow(depth=20, activations=["relu"], init="kaiming", sgd_steps=1)
    assert 0.1 < kaiming.first_last_ratio["relu"] < 10
    residual = E.gradient_flow(depth=20, activations=["sigmoid", "relu"], residual=True, sgd_steps=1)
    assert 1e-2 < residual.first_last_ratio["sigmoid"] < 1e2          # vs ~1e-17 without the skip path
    assert 0.1 < residual.first_last_ratio["relu"] < 10


def test_clipping_bounds_the_norm_and_keeps_the_loss_finite():
    r = E.gradient_flow(depth=20, explode_gain=1.5, max_norm=1.0, lr=0.05, sgd_steps=10)
    assert r.total_norm_before > 1e3
    assert r.total_norm_after <= 1.0 + 1e-6
    assert r.total_norm_after == pytest.approx(1.0, rel=1e-4)       # clipped, not zeroed
    plain = r.loss_unclipped
    assert any(not math.isfinite(v) or v > 1e30 for v in plain)
    assert r.diverged_at is not None
    assert all(math.isfinite(v) for v in r.loss_clipped)
    assert r.loss_clipped[-1] < r.loss_clipped[0]


def test_clip_grad_norm_leaves_small_gradients_alone():
    r = E.gradient_flow(depth=3, explode_gain=0.5, max_norm=100.0, sgd_steps=2)
    assert r.total_norm_before < 100
    assert r.total_norm_after == pytest.approx(r.total_norm_before)


# ---- LayerNorm vs BatchNorm --------------------------------------------------------------------------

def test_manual_formulas_match_pytorch():
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(3)) * 4 + 2
    ln = torch.nn.LayerNorm(10)(x)
    bn = torch.nn.BatchNorm1d(10).train()(x)
    assert (E.layer_norm_manual(x) - ln).abs().max() < 1e-5
    assert (E.batch_norm_manual(x) - bn).abs().max() < 1e-5
    r = E.norm_compare(batch=8, features=16, shift=100, scale=0.01, bn_updates=5)
    for s in (r.layernorm, r.batchnorm, r.batchnorm_eval):
        assert s.manual_max_abs_diff < 1e-5


def test_layernorm_normalises_samples_batchnorm_features():
    r = E.norm_compare(batch=16, features=32, shift=5, scale=3, feature_spread=4)
    ln, bn = r.layernorm, r.batchnorm
    assert ln.per_sample_mean == pytest.approx([0] * 16, abs=1e-9)
    assert ln.per_sample_std == pytest.approx([1] * 16, abs=1e-3)
    assert bn.per_feature_mean == pytest.approx([0] * 32, abs=1e-9)
    assert bn.per_feature_std == pytest.approx([1] * 32, abs=1e-3)
    # ... and not the other way round: the offsets survive along the other axis
    assert max(abs(m) for m in ln.per_feature_mean) > 0.5
    assert max(abs(m) for m in bn.per_sample_mean) > 0.1
    assert len(r.input.values) == 16 and len(r.input.values[0]) == 32


def test_batch_of_one_is_reported_not_raised():
    r = E.norm_compare(batch=1, features=8)
    assert "Expected more than 1 value per channel" in r.batchnorm.error
    assert r.batchnorm.manual_max_abs_diff is None
    assert r.batchnorm.values == [[0.0] * 8] and r.batchnorm.per_feature_std == [0.0] * 8
    assert r.layernorm.error is None and r.layernorm.per_sample_std == pytest.approx([1.0], abs=1e-3)
    assert r.batchnorm_eval.error is None                              # eval mode uses running statistics
    assert "Expected more than 1 value" in E.tables_text(r.tables())


def test_eval_mode_uses_running_statistics():
    untrained = E.norm_compare(batch=4, features=6, bn_updates=0)
    x = torch.tensor(untrained.input.values, dtype=torch.float64)
    got = torch.tensor(untrained.batchnorm_eval.values, dtype=torch.float64)
    assert (got - x / math.sqrt(1 + E.EPS)).abs().max() < 1e-9        # running mean 0, var 1
    assert untrained.running_mean == [0.0] * 6 and untrained.running_var == [1.0] * 6
    trained = E.norm_compare(batch=256, features=6, shift=3, scale=2, bn_updates=300)
    s = trained.batchnorm_eval
    assert sum(abs(m) for m in s.per_feature_mean) / 6 < 0.3
    assert sum(s.per_feature_std) / 6 == pytest.approx(1.0, abs=0.2)
    assert sum(trained.running_var) / 6 == pytest.approx(4.0, rel=0.25)  # scale 2 squared


# ---- validation, determinism, JSON, figures ------------------------------------------------------------

@pytest.mark.parametrize("fn,kwargs,name", [
    (E.softmax_scaling, dict(dims=[0]), "dims"),
    (E.softmax_scaling, dict(dims=[2048]), "dims"),
    (E.softmax_scaling, dict(dims=[]), "dims"),
    (E.softmax_scaling, dict(seq_len=1), "seq_len"),
    (E.softmax_scaling, dict(pairs=10**6), "pairs"),
    (E.softmax_scaling, dict(example_scale=0), "example_scale"),
    (E.softmax_scaling, dict(example_logits="a, b"), "example_logits"),
    (E.softmax_scaling, dict(example_logits=[1.0]), "example_logits"),
    (E.softmax_scaling, dict(seed=-1), "seed"),
    (E.gradient_flow, dict(depth=0), "depth"),
    (E.gradient_flow, dict(depth=51), "depth"),
    (E.gradient_flow, dict(depth=2.5), "depth"),
    (E.gradient_flow, dict(width=1), "width"),
    (E.gradient_flow, dict(activations=["swish"]), "activations"),
    (E.gradient_flow, dict(activations=[]), "activations"),
    (E.gradient_flow, dict(init="he"), "init"),
    (E.gradient_flow, dict(residual="yes"), "residual"),
    (E.gradient_flow, dict(max_norm=0), "max_norm"),
    (E.gradient_flow, dict(lr=float("nan")), "lr"),
    (E.norm_compare, dict(batch=0), "batch"),
    (E.norm_compare, dict(features=1), "features"),
    (E.norm_compare, dict(scale=0), "scale"),
    (E.norm_compare, dict(bn_updates=-1), "bn_updates"),
])
def test_out_of_range_knobs_raise_a_value_error_naming_them(fn, kwargs, name):
    with pytest.raises(ValueError, match=name):
        fn(**kwargs)


FAST = {E.softmax_scaling: dict(dims=[4, 64], pairs=500, rows=16), E.gradient_flow: dict(depth=6, sgd_steps=3),
        E.norm_compare: dict(batch=4, features=5)}


@pytest.mark.parametrize("fn", list(FAST), ids=lambda f: f.__name__)
def test_same_seed_same_numbers_and_json_ready(fn):
    a, b, c = fn(**FAST[fn], seed=7).to_dict(), fn(**FAST[fn], seed=7).to_dict(), fn(**FAST[fn], seed=8).to_dict()
    assert a == b and a != c
    assert json.loads(json.dumps(a, allow_nan=False)) == a


def test_experiments_leave_the_thread_count_alone():
    before = torch.get_num_threads()
    E.norm_compare()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kind,fn", [("softmax", E.softmax_scaling), ("gradients", E.gradient_flow),
                                     ("norms", E.norm_compare)])
def test_figures_draw_and_every_plot_has_an_explanation(kind, fn):
    from matplotlib.figure import Figure
    result = fn(**FAST[fn])
    for key, build in P.FIGURES[kind]:
        fig = build(result)
        assert isinstance(fig, Figure) and E.EXPLANATIONS[key]
        fig.savefig(io.BytesIO(), format="png")
        if key in ("softmax_variance", "gradient_flow"):
            assert fig.axes[0].get_yscale() == "log"


def test_figures_cope_with_batch_one_and_divergence():
    P.norm_heatmaps_figure(E.norm_compare(batch=1)).savefig(io.BytesIO(), format="png")
    P.norm_stats_figure(E.norm_compare(batch=1)).savefig(io.BytesIO(), format="png")
    P.gradient_clipping_figure(E.gradient_flow(depth=30, sgd_steps=4)).savefig(io.BytesIO(), format="png")


# ---- CLI -----------------------------------------------------------------------------------------------

def _parse(*argv):
    parser = argparse.ArgumentParser()
    experiments_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["explain", *argv])


def test_cli_json_keys(capsys):
    assert experiments_cli.run(_parse("softmax", "--json", "--dims", "4,64", "--pairs", "500")) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["dims"] == [4, 64]
    for key in ("score_var_unscaled", "score_var_scaled", "max_prob_unscaled", "max_prob_scaled",
                "entropy_unscaled", "entropy_scaled"):
        assert len(d[key]) == 2
    assert experiments_cli.run(_parse("gradients", "--json", "--depth", "7", "--activations", "sigmoid,relu,gelu",
                                      "--sgd-steps", "3")) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["layers"] == list(range(1, 8)) and set(d["grad_norms"]) == {"sigmoid", "relu", "gelu"}
    assert all(len(v) == 7 for v in d["grad_norms"].values())
    assert experiments_cli.run(_parse("norms", "--json", "--batch", "1", "--shift", "-3")) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("layernorm", "batchnorm"):
        assert {"per_sample_mean", "per_sample_std", "per_feature_mean", "per_feature_std",
                "manual_max_abs_diff"} <= set(d[name])
    assert d["batchnorm"]["error"] and d["batchnorm"]["manual_max_abs_diff"] is None


def test_cli_table_and_bad_knob(capsys):
    assert experiments_cli.run(_parse("norms")) == 0
    out = capsys.readouterr().out
    assert "LayerNorm" in out and "What to look for" in out
    for argv in (("gradients", "--depth", "99"), ("gradients", "--depth", "abc"), ("gradients", "--init", "he"),
                 ("softmax", "--dims", "3,x"), ("norms", "--scale", "-1")):
        assert experiments_cli.run(_parse(*argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_python_m_minigpt_explain_end_to_end():
    r = subprocess.run([sys.executable, "-m", "minigpt", "explain", "softmax", "--json", "--dims", "8,512"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["dims"] == [8, 512] and d["score_var_unscaled"][1] > d["score_var_unscaled"][0]


# ---- 4. attention scores inside a model ---------------------------------------------------------------

def test_model_scores_are_the_models_own_attention(tiny_gpt):
    """The hooked q·k, scaled, masked and softmaxed, must be exactly the attention the model computes."""
    ids = torch.randint(0, 40, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    tiny_gpt.eval()
    _, _, atts = tiny_gpt(torch.tensor([ids]), return_attn=True)
    hs = tiny_gpt.config.n_embd // tiny_gpt.config.n_head
    causal = torch.ones(12, 12).tril().bool()
    for raw, att in zip(E.attention_scores(tiny_gpt, ids), atts):
        ours = torch.softmax((raw / math.sqrt(hs)).masked_fill(~causal, float("-inf")), dim=-1)
        torch.testing.assert_close(ours, att[0], atol=1e-5, rtol=1e-5)
    assert not any(b.attn.c_attn._forward_hooks for b in tiny_gpt.transformer.h)  # the hooks are gone


def test_model_scores_obey_the_theory(tiny_gpt):
    ids = torch.randint(0, 40, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():  # larger weights, so the scores are far from zero like a trained model's
        for block in tiny_gpt.transformer.h:
            block.attn.c_attn.weight.mul_(8)
    r = E.model_scores(tiny_gpt, ids)
    hs = r.head_dim
    assert r.tokens == 16 and r.layers == [0, 1] and hs == 16
    assert r.uniform_entropy == pytest.approx(sum(math.log(n) for n in range(2, 17)) / 15)
    for su, ss, mu, ms, eu, es in zip(r.score_std_unscaled, r.score_std_scaled, r.max_prob_unscaled,
                                      r.max_prob_scaled, r.entropy_unscaled, r.entropy_scaled):
        assert ss == pytest.approx(su / math.sqrt(hs), rel=1e-5)
        # Dividing logits by sqrt(d) > 1 is a higher temperature: a lower top probability, more entropy.
        assert ms < mu and es > eu and es <= r.uniform_entropy + 1e-6
    assert json.dumps(r.to_dict())
    assert len(P.model_scores_figure(r).axes) == 2


def test_model_scores_refuse_what_has_no_attention(tiny_gpt):
    from minigpt.model import GPTConfig, build_model
    with pytest.raises(ValueError, match="at least two tokens"):
        E.model_scores(tiny_gpt, [3])
    bigram = build_model(GPTConfig(vocab_size=40, block_size=16, model="bigram"))
    with pytest.raises(ValueError, match="bigram model has no attention"):
        E.model_scores(bigram, [1, 2, 3])


def test_cli_scores_of_a_checkpoint(tiny_gpt, tmp_path, capsys, small_text):
    from minigpt.checkpoint import save_checkpoint
    from minigpt.cli import main
    from minigpt.model import GPTConfig, build_model
    from minigpt.tokenizers import CharTokenizer
    tok = CharTokenizer.from_text(small_text)
    model = build_model(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
    path = save_checkpoint(tmp_path / "m.safetensors", model, tok, {})
    assert main(["explain", "scores", str(path), "--text", "First Citizen:", "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["tokens"] == 14 and len(d["score_std_scaled"]) == 2 and d["head_dim"] == 16
    assert main(["explain", "scores", str(path), "--text", "Zebra€"]) == 2
    assert "not in the model's vocabulary" in capsys.readouterr().err
