"""The Train tab's estimate (minigpt/estimate.py): the optimizer's state in the memory estimate."""

import pytest
import torch

from minigpt.estimate import muon_params, optimizer_bytes, train_memory_bytes
from minigpt.limits import Limits
from minigpt.model import GPTConfig, build_model, estimate_params
from minigpt.optim import make_optimizer, muon_split
from minigpt.playground import Playground
from minigpt.train import TrainConfig
from minigpt.train_spec import TrainSpec

CONFIGS = [dict(n_layer=2, n_head=2, n_embd=32), dict(n_layer=3, n_head=4, n_embd=48, mlp=False),
           dict(n_layer=1, n_head=2, n_embd=16, bias=True, norm="rms"), dict(n_layer=2, n_embd=32, model="bigram")]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_muon_params_are_the_matrices_muon_split_gives_muon(kw):
    cfg = GPTConfig(vocab_size=40, block_size=16, **kw)
    model = build_model(cfg)
    assert muon_params(cfg) == sum(p.numel() for p in muon_split(model)[0])


@pytest.mark.parametrize("kind", ["adamw", "muon"])
@pytest.mark.parametrize("kw", CONFIGS[:3], ids=["standard", "no-mlp", "rms-bias"])
def test_optimizer_bytes_match_the_state_the_optimizer_really_keeps(kind, kw):
    cfg = GPTConfig(vocab_size=40, block_size=16, **kw)
    model = build_model(cfg)
    opt = make_optimizer(model, TrainConfig(optimizer=kind), "cpu")
    x = torch.randint(0, 40, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    states = [s for o in (getattr(opt, "adamw", opt), getattr(opt, "muon", None)) if o is not None
              for s in o.state.values()]
    kept = sum(t.numel() * t.element_size() for state in states for k, t in state.items()
               if torch.is_tensor(t) and k != "step")  # (AdamW's step counters: a few bytes)
    assert optimizer_bytes(cfg, kind) == kept


def test_the_memory_estimate_follows_the_optimizer():
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    p, m = estimate_params(cfg), muon_params(cfg)
    adamw, muon = train_memory_bytes(cfg, 32, "adamw"), train_memory_bytes(cfg, 32, "muon")
    acts = adamw - 16 * p  # weights, gradients and two moments: 16 bytes a parameter with AdamW
    assert muon == 16 * p - 4 * m + acts  # Muon: one momentum buffer (4 bytes) instead of two moments
    assert m == 4 * 12 * 128 * 128 and train_memory_bytes(cfg, 32) == adamw
    pg = Playground(Limits(), shipped_path="/nonexistent", device="cpu")
    est = {k: pg.estimate(TrainSpec(optimizer=k, budget="iterations", amount=10)) for k in ("adamw", "muon")}
    assert est["adamw"].memory_mb - est["muon"].memory_mb == pytest.approx(4 * m / 2**20)


def test_the_bigram_estimate_says_adamw_trains_it_whatever_the_knob():
    pg = Playground(Limits(), shipped_path="/nonexistent", device="cpu")
    notes = pg.estimate(TrainSpec(model="bigram", optimizer="muon")).notes
    assert any("AdamW trains it" in n for n in notes)
    assert not any("AdamW trains it" in n for n in pg.estimate(TrainSpec(model="bigram", optimizer="adamw")).notes)


def test_the_step_time_prior_follows_the_dtype_training_will_use():
    """On a CPU with native bf16 training runs under bf16 autocast, about twice fp32's rate: the page's
    prior step time (before any run calibrates it) is the bf16 one there, fp32's elsewhere."""
    from minigpt.device import pick_precision
    from minigpt.estimate import SpeedModel
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    fp32, bf16 = SpeedModel("cpu").step_seconds(cfg, 48), SpeedModel("cpu", "bfloat16").step_seconds(cfg, 48)
    assert bf16 < 0.6 * fp32
    assert SpeedModel("cuda", "bfloat16").step_seconds(cfg, 48) == SpeedModel("cuda").step_seconds(cfg, 48)
    pg = Playground(device="cpu")
    want = bf16 if pick_precision("cpu").dtype == "bfloat16" else fp32
    assert pg.speed.step_seconds(cfg, 48) == pytest.approx(want)
