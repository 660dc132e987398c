"""The ladder (bigram table → GPT), its CLI, its figures, the shipped measurement, and averaging → attention."""

import io
import json
import threading
from dataclasses import fields

import pytest
import torch

from minigpt.averaging import average_loop, averaging, model_attention, softmax_weights, tril_weights
from minigpt.ladder import (DEFAULT_ITERS, RUNGS, LadderConfig, LadderDone, RungDone, RungProgress, RungStarted,
                            gain_note, ladder_configs, ladder_data, load_measured, rung_config, run_ladder)
from minigpt.model import GPT, Bigram, GPTConfig, build_model, estimate_params
from minigpt.tokenizers import CharTokenizer
from minigpt.train import Eval, Start, Step

V, C, T = 65, 128, 64


# ---- the rungs ------------------------------------------------------------------------------------

def test_each_rung_adds_the_parameters_of_its_idea():
    n = [estimate_params(c) for c in ladder_configs(V)]
    attn, mlp, norm = 4 * C * C, 8 * C * C, C  # bias-free Linear and LayerNorm, as the default model
    assert n[0] == V * V                                        # 1 a table of next-token logits
    assert n[1] == V * C + T * C                                # 2 embeddings (the head is tied to wte)
    assert n[2] == n[1] + attn                                  # 3 q, k, v and the output projection
    assert n[3] == n[2]                                         # 4 four heads split the same width
    assert n[4] == n[3] + mlp                                   # 5 the MLP
    assert n[5] == n[4]                                         # 6 a residual adds no parameters
    assert n[6] == n[5] + 3 * norm                              # 7 ln_1, ln_2 and ln_f
    assert n[7] == n[1] + 4 * (attn + mlp + 2 * norm) + norm    # 8 four standard blocks
    for cfg, count in zip(ladder_configs(V), n):
        assert build_model(cfg).num_params() == count


def test_rungs_are_switch_settings_and_the_last_is_the_default_model():
    cfgs = ladder_configs(V)
    assert len(cfgs) == len(RUNGS) == 8
    assert cfgs[7] == GPTConfig(vocab_size=V)  # exactly the page's default model
    assert isinstance(build_model(cfgs[0]), Bigram)
    allowed = {"model", "n_layer", "n_head", "norm", "mlp", "residual"}
    for cfg in cfgs:
        changed = {f.name for f in fields(GPTConfig) if getattr(cfg, f.name) != getattr(GPTConfig(vocab_size=V), f.name)}
        assert changed <= allowed, changed
    two, one, multi, ff, res, ln = (build_model(c) for c in cfgs[1:7])
    assert len(two.transformer.h) == 0 and isinstance(two.transformer.ln_f, torch.nn.Identity)
    for m, heads, has_mlp, residual in ((one, 1, False, False), (multi, 4, False, False), (ff, 4, True, False),
                                        (res, 4, True, True)):
        (block,) = m.transformer.h
        assert block.attn.n_head == heads and (block.mlp is not None) == has_mlp and block.residual == residual
        assert isinstance(block.ln_1, torch.nn.Identity) and isinstance(m.transformer.ln_f, torch.nn.Identity)
    (block,) = ln.transformer.h
    assert isinstance(block.ln_1, torch.nn.LayerNorm) and block.residual and block.mlp is not None


@pytest.mark.parametrize("norm,cls", [("batch", torch.nn.BatchNorm1d), ("rms", torch.nn.RMSNorm)])
def test_the_norm_switch_swaps_the_norm_of_rungs_7_and_8(norm, cls):
    for index in (7, 8):
        m = build_model(rung_config(index, V, norm=norm))
        assert all(isinstance(b.ln_1, cls) and isinstance(b.ln_2, cls) for b in m.transformer.h)
    assert rung_config(6, V, norm=norm) == rung_config(6, V)  # the rungs before have no norm at all
    with pytest.raises(ValueError, match="norm"):
        rung_config(7, V, norm="none")


def test_width_and_context_are_shared_by_every_rung():
    for cfg in ladder_configs(V, n_embd=64, block_size=32)[1:]:
        assert cfg.n_embd == 64 and cfg.block_size == 32
    with pytest.raises(ValueError, match="rung"):
        rung_config(9, V)


def test_gain_note_says_when_a_rung_does_not_help():
    assert gain_note(2.0, 2.5, "bigram") == ""
    assert "does not help" in gain_note(2.6, 2.5, "bigram")
    assert "no clear gain" in gain_note(2.495, 2.5, "bigram")


# ---- running it -----------------------------------------------------------------------------------

@pytest.fixture
def tiny_data(small_text):
    tok = CharTokenizer.from_text(small_text)
    from minigpt.data import split_ids
    return tok, split_ids(torch.tensor(tok.encode(small_text), dtype=torch.long))


def tiny_settings(**kw):
    return LadderConfig(**{**dict(iters_per_rung=4, n_embd=16, block_size=8, evals=2, sample_tokens=12,
                                  device="cpu"), **kw})


def test_every_rung_trains_and_generates(tiny_data):
    tok, splits = tiny_data
    events = list(run_ladder(tiny_settings(), tok, splits))
    started = [e for e in events if isinstance(e, RungStarted)]
    done = [e for e in events if isinstance(e, RungDone)]
    assert [e.rung for e in started] == [e.rung for e in done] == list(range(1, 9))
    assert isinstance(events[-1], LadderDone) and not events[-1].stopped and events[-1].rungs == done
    for s, d, cfg in zip(started, done, ladder_configs(tok.vocab_size, 16, 8)):
        assert s.params == d.params == estimate_params(cfg) and s.config == cfg.to_dict()
        assert s.remark == d.remark == RUNGS[s.rung - 1].remark
        assert d.iters == 4 and d.reason == "max_iters" and 0 < d.val_loss < 10 and d.tokens_per_s > 0
        assert len(d.sample) >= 12 and set(d.sample) <= set(tok.chars)
        assert [p[0] for p in d.curve] == [2, 4]  # an estimate every iters // evals steps
        assert d.model.config == cfg
    progress = [e for e in events if isinstance(e, RungProgress)]
    kinds = {type(e.event) for e in progress}
    assert kinds == {Start, Step, Eval} and {e.rung for e in progress} == set(range(1, 9))
    # Rung k's events all come between its start and its end.
    order = [(e.rung, type(e).__name__) for e in events[:-1]]
    assert order == sorted(order, key=lambda x: x[0])


def test_the_same_seed_gives_the_same_ladder(tiny_data):
    tok, splits = tiny_data
    a = [e for e in run_ladder(tiny_settings(), tok, splits, rungs=[1, 3]) if isinstance(e, RungDone)]
    b = [e for e in run_ladder(tiny_settings(), tok, splits, rungs=[1, 3]) if isinstance(e, RungDone)]
    assert [(d.val_loss, d.sample) for d in a] == [(d.val_loss, d.sample) for d in b]


def test_stop_ends_the_ladder_within_a_rung(tiny_data):
    tok, splits = tiny_data
    stop = threading.Event()
    events = []
    for ev in run_ladder(tiny_settings(iters_per_rung=500), tok, splits, stop=stop):
        events.append(ev)
        if isinstance(ev, RungProgress) and ev.rung == 2 and isinstance(ev.event, Step) and ev.event.iter == 3:
            stop.set()
    done = [e for e in events if isinstance(e, RungDone)]
    assert [d.rung for d in done] == [1, 2] and done[1].reason == "stopped" and done[1].iters == 3
    assert done[1].val_loss is not None and events[-1].stopped


def test_settings_are_checked_before_anything_trains(tiny_data):
    tok, splits = tiny_data
    from minigpt.limits import Limits
    with pytest.raises(ValueError, match="one budget"):
        list(run_ladder(tiny_settings(seconds_per_rung=5.0), tok, splits))
    with pytest.raises(ValueError, match="divisible"):
        list(run_ladder(tiny_settings(n_embd=18), tok, splits))
    with pytest.raises(ValueError, match="seconds_per_rung"):  # eight rungs must fit one run's time limit
        list(run_ladder(tiny_settings(iters_per_rung=None, seconds_per_rung=100.0), tok, splits,
                        limits=Limits(max_train_seconds=600)))
    with pytest.raises(ValueError, match="rungs"):
        list(run_ladder(tiny_settings(), tok, splits, rungs=[0]))


def test_the_whole_ladder_is_one_job_under_the_time_limit(tiny_data):
    from minigpt.limits import Limits
    tok, splits = tiny_data
    events = list(run_ladder(tiny_settings(iters_per_rung=100_000), tok, splits, limits=Limits(max_train_seconds=0.5)))
    done = [e for e in events if isinstance(e, RungDone)]
    assert done[0].reason == "max_seconds" and len(done) < 8 and events[-1].stopped


def test_a_seconds_budget_stops_each_rung_on_the_clock(tiny_data):
    tok, splits = tiny_data
    done = [e for e in run_ladder(tiny_settings(iters_per_rung=None, seconds_per_rung=0.3), tok, splits, rungs=[1, 2])
            if isinstance(e, RungDone)]
    assert [d.reason for d in done] == ["max_seconds", "max_seconds"] and all(d.iters > 0 for d in done)


# ---- the command line and the shipped measurement -------------------------------------------------

RECORD_KEYS = {"rungs", "command", "machine", "date", "wall_seconds", "cpu_seconds", "load_average", "settings",
               "device", "dtype", "torch_version"}


@pytest.fixture
def text_file(tmp_path, small_text):
    path = tmp_path / "small.txt"
    path.write_text(small_text)
    return str(path)


def test_cli_json_has_the_ladder_keys(capsys, tmp_path, text_file):
    from minigpt.cli import main
    out = tmp_path / "ladder.json"
    assert main(["ladder", "--iters-per-rung", "2", "--n-embd", "16", "--block-size", "8", "--device", "cpu",
                 "--data", text_file, "--json", "--out", str(out)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert RECORD_KEYS <= set(record) and len(record["rungs"]) == 8
    for r in record["rungs"]:
        assert {"name", "idea", "params", "val_loss", "seconds", "tokens_per_s", "note"} <= set(r)
    assert record["rungs"][0]["name"] == "bigram" and record["rungs"][6]["name"] == "LayerNorm"
    assert record["command"].startswith("python -m minigpt ladder --iters-per-rung 2 --n-embd 16")
    assert load_measured(out)["rungs"] == record["rungs"]


def test_cli_table_and_bad_flags(capsys, text_file):
    from minigpt.cli import main
    assert main(["ladder", "--iters-per-rung", "2", "--n-embd", "16", "--block-size", "8", "--norm", "rms",
                 "--device", "cpu", "--data", text_file]) == 0
    out = capsys.readouterr().out
    assert "val loss" in out and "tokens/s" in out and "7 RMSNorm" in out and "8 depth" in out
    assert main(["ladder", "--iters-per-rung", "0", "--data", text_file]) == 2
    assert "iters_per_rung" in capsys.readouterr().err
    assert main(["ladder", "--n-embd", "30", "--data", text_file]) == 2
    assert "divisible" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ladder", "--iters-per-rung", "5", "--seconds-per-rung", "5"])


def test_the_shipped_measured_ladder_loads():
    record = load_measured()
    assert [r["name"] for r in record["rungs"]] == ["bigram", "embeddings", "one head", "multi-head",
                                                    "feed-forward", "residual", "LayerNorm", "depth"]
    assert record["settings"]["iters_per_rung"] == DEFAULT_ITERS and record["command"].startswith("python -m minigpt")
    assert record["machine"]["cores"] and record["date"] and record["wall_seconds"] > 0 and record["cpu_seconds"] > 0
    bigram, full = record["rungs"][0]["val_loss"], record["rungs"][-1]["val_loss"]
    assert full <= bigram - 0.3
    for prev, r in zip(record["rungs"], record["rungs"][1:]):  # every rung that did not help says so
        assert bool(r["note"]) == (r["val_loss"] > prev["val_loss"] - 0.01)


def test_a_bad_measured_file_is_refused(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"rungs": [{"name": "bigram"}]}')
    with pytest.raises(ValueError, match="not a measured ladder"):
        load_measured(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        load_measured(bad)


@pytest.mark.slow
def test_at_the_default_budget_the_full_model_ends_well_below_the_bigram():
    tok, splits = ladder_data()
    done = [e for e in run_ladder(LadderConfig(), tok, splits, rungs=[1, 8]) if isinstance(e, RungDone)]
    bigram, full = done[0].val_loss, done[1].val_loss
    assert full <= bigram - 0.3, (bigram, full)


# ---- figures --------------------------------------------------------------------------------------

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_ladder_figures_build_from_live_and_shipped_rungs(tiny_data):
    from matplotlib.figure import Figure

    from minigpt.ladder_plots import ladder_bars_figure, ladder_curves_figure
    tok, splits = tiny_data
    live = [e.to_dict() for e in run_ladder(tiny_settings(), tok, splits, rungs=[1, 2, 3]) if isinstance(e, RungDone)]
    live[1]["note"] = "does not help"
    for rungs in (live, load_measured()["rungs"], [{"rung": 4, "name": "multi-head", "curve": []}], []):
        for fig in (ladder_curves_figure(rungs), ladder_curves_figure(rungs, x="seconds"), ladder_bars_figure(rungs)):
            assert isinstance(fig, Figure) and _png(fig).startswith(b"\x89PNG")
    bars = ladder_bars_figure(live)
    labels = [t.get_text() for t in bars.axes[0].texts]
    assert any("no gain" in t for t in labels)  # the rung with a note is flagged
    assert any("bigram" in t.get_text() for t in bars.axes[0].get_legend().get_texts())


# ---- from averaging to attention ------------------------------------------------------------------

def test_three_ways_of_averaging_agree():
    tok = CharTokenizer.from_text("abcdefgh ")
    avg = averaging("abba cab fed", tok)
    assert avg.max_diff < 1e-6 and avg.diff_weights < 1e-6
    assert torch.allclose(avg.loop, avg.tril, atol=1e-6) and torch.allclose(avg.loop, avg.softmax, atol=1e-6)
    # Row t is the share of each token among the first t + 1: after "abba", a and b have half each.
    assert avg.columns[:2] == ["a", "b"] and avg.loop[3, :2].tolist() == [0.5, 0.5]
    assert torch.allclose(avg.loop.sum(1), torch.ones(len(avg.tokens), dtype=torch.float64))


def test_the_weights_are_the_same_lower_triangle():
    x = torch.randn(7, 5, dtype=torch.float64)
    assert torch.allclose(tril_weights(7) @ x, average_loop(x), atol=1e-12)
    assert torch.allclose(softmax_weights(7), tril_weights(7), atol=1e-12)
    assert (tril_weights(7).triu(1) == 0).all() and tril_weights(7)[3, 0] == 0.25


def test_the_model_attention_is_data_dependent_where_averaging_is_not(tiny_data):
    tok, splits = tiny_data
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16))
    avg = averaging("First Citizen:\nBefore we proceed", tok, model)
    assert len(avg.tokens) == 16 and avg.cropped  # the model's context
    assert avg.attention.shape == (2, 2, 16, 16)
    assert torch.allclose(avg.attention.sum(-1), torch.ones(2, 2, 16), atol=1e-5)
    assert (avg.attention.triu(1) == 0).all()
    assert not torch.allclose(avg.attention[0, 0].double(), avg.weights, atol=1e-3)
    assert torch.equal(model_attention(model, tok.encode("First")), model_attention(model, tok.encode("First")))
    assert averaging("abc", CharTokenizer.from_text("abc"), Bigram(GPTConfig(vocab_size=3, model="bigram"))).attention is None
    with pytest.raises(ValueError):
        averaging("", tok)
    with pytest.raises(ValueError):
        averaging("zzz€", tok)


def test_averaging_figures_build(tiny_data):
    from minigpt.ladder_plots import attention_vs_average_figure, averaging_figure
    tok, _ = tiny_data
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16))
    avg = averaging("First Citizen:\nBefore", tok, model)
    fig = averaging_figure(avg)
    assert len(fig.axes) == 4 and "max |difference" in fig.axes[1].get_title()  # three maps and a colour bar
    for f in (fig, attention_vs_average_figure(avg, 1, 1), attention_vs_average_figure(averaging("First", tok))):
        assert _png(f).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="layer"):
        attention_vs_average_figure(avg, 2, 0)
