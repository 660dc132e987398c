"""Checkpoints: bit-exact round trips, and every kind of bad file rejected with CheckpointError."""

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from minigpt.checkpoint import CheckpointError, checkpoint_bytes, load_checkpoint, save_checkpoint
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizers import CharTokenizer
from minigpt.train import TrainConfig, make_optimizer


@pytest.fixture
def saved(tmp_path, small_text):
    tok = CharTokenizer.from_text(small_text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
    path = save_checkpoint(tmp_path / "m.safetensors", model, tok, {"iters": 5, "val_loss": 2.5})
    return path, model, tok


def _tensors_and_meta(path):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_round_trip_is_bit_exact(saved):
    path, model, tok = saved
    ck = load_checkpoint(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), ck.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert ck.model.lm_head.weight is ck.model.transformer.wte.weight  # re-tied
    assert ck.tokenizer.chars == tok.chars and ck.training["iters"] == 5
    x = torch.randint(0, tok.vocab_size, (2, 16))
    model.eval()
    assert torch.equal(model(x)[0], ck.model(x)[0])


def test_optimizer_state_round_trip(tmp_path, saved):
    _, model, tok = saved
    opt = make_optimizer(model, TrainConfig(optimizer="adamw"), "cpu")
    x = torch.randint(0, tok.vocab_size, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    path = save_checkpoint(tmp_path / "o.safetensors", model, tok, {}, opt)
    ck = load_checkpoint(path)
    opt2 = make_optimizer(ck.model, TrainConfig(optimizer="adamw"), "cpu")
    opt2.load_state_dict(ck.optimizer_state)
    a, b = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert a.keys() == b.keys()
    for k in a:
        s1, s2 = a[k], b[k]
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])


def test_truncated_file(saved, tmp_path):
    path, *_ = saved
    raw = path.read_bytes()
    for cut in (0, 4, 20, len(raw) // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError):
            load_checkpoint(bad)


def test_renamed_pickle_is_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps({"model": Boom()}))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(bad)


def test_header_claiming_huge_sizes(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 4 * 10**18]}}).encode()
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CheckpointError, match="outside the file"):
        load_checkpoint(bad)
    bad.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(bad)


def _rewrite(path, out, tensors=None, meta=None):
    t, m = _tensors_and_meta(path)
    t = tensors(t) if tensors else t
    m = meta(m) if meta else m
    save_file(t, str(out), metadata=m)
    return out


def test_missing_metadata(saved, tmp_path):
    path, *_ = saved
    t, _ = _tensors_and_meta(path)
    save_file(t, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(CheckpointError, match="not a minigpt checkpoint"):
        load_checkpoint(tmp_path / "nometa.safetensors")
    bad = _rewrite(path, tmp_path / "noconfig.safetensors", meta=lambda m: {k: v for k, v in m.items() if k != "config"})
    with pytest.raises(CheckpointError, match="'config' is missing"):
        load_checkpoint(bad)


def test_wrong_shape(saved, tmp_path):
    path, *_ = saved
    def shrink(t):
        t["transformer.wpe.weight"] = t["transformer.wpe.weight"][:8].clone()
        return t
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(_rewrite(path, tmp_path / "shape.safetensors", tensors=shrink))


def test_extra_and_missing_tensors(saved, tmp_path):
    path, *_ = saved
    extra = _rewrite(path, tmp_path / "extra.safetensors", tensors=lambda t: {**t, "backdoor": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="unexpected tensors: backdoor"):
        load_checkpoint(extra)
    missing = _rewrite(path, tmp_path / "missing.safetensors",
                       tensors=lambda t: {k: v for k, v in t.items() if k != "transformer.ln_f.weight"})
    with pytest.raises(CheckpointError, match="lacks tensors"):
        load_checkpoint(missing)


def test_wrong_dtype(saved, tmp_path):
    path, *_ = saved
    half = _rewrite(path, tmp_path / "half.safetensors", tensors=lambda t: {k: v.half() for k, v in t.items()})
    with pytest.raises(CheckpointError, match="dtype"):
        load_checkpoint(half)


def test_config_outside_limits_and_vocab_mismatch(saved, tmp_path):
    path, *_ = saved
    def huge(m):
        c = json.loads(m["config"]); c["n_layer"] = 10_000
        return {**m, "config": json.dumps(c)}
    with pytest.raises(CheckpointError, match="n_layer"):
        load_checkpoint(_rewrite(path, tmp_path / "big.safetensors", meta=huge))
    other_vocab = lambda m: {**m, "tokenizer": json.dumps({"type": "char", "chars": "abc"})}
    with pytest.raises(CheckpointError, match="vocabulary"):
        load_checkpoint(_rewrite(path, tmp_path / "vocab.safetensors", meta=other_vocab))
    bad_json = lambda m: {**m, "config": "{not json"}
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(_rewrite(path, tmp_path / "json.safetensors", meta=bad_json))


def test_save_replaces_atomically_and_leaves_no_temp_files(saved):
    path, model, tok = saved
    save_checkpoint(path, model, tok, {"iters": 6})
    assert load_checkpoint(path).training["iters"] == 6
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_bytes_are_plain_safetensors(saved):
    _, model, tok = saved
    raw = checkpoint_bytes(model, tok)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"]["format"] == "minigpt" and "lm_head.weight" not in header
