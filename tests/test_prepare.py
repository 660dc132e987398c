"""Prepared data: the streaming encoder round-trips, splits like the in-memory path, and trains the same."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import minigpt.prepare as prep
from minigpt.cli import main
from minigpt.data import DataError, get_batch, split_ids, val_tensor
from minigpt.model import GPTConfig
from minigpt.tokenizers import build_tokenizer, gpt2_encoding
from minigpt.train import Done, Eval, Run, Step, TrainConfig, train

# Whitespace runs, multi-byte characters and long lines, so that small reads cut through all of them.
TEXTS = {
    "b.txt": "First Citizen:\nBefore we proceed, hear me speak.\n\n\nAll:\n  Speak,   speak.\n" * 30,
    "a.txt": "Ünïcödé — “quotes” and 日本語 text\r\nwith CRLF lines\r\n\tand tabs\t\n" * 25,
    "sub/c.txt": "no newline at the end" + " long line" * 200,
    "sub/empty.txt": "",
}
ORDER = ["a.txt", "b.txt", "sub/c.txt", "sub/empty.txt"]  # sorted by path


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "READ_BYTES", 97)  # many reads per file, cutting characters and lines
    root = tmp_path / "corpus"
    for name, text in TEXTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8", newline="")
    (root / "notes.md").write_text("not a .txt file")
    return root


def _all_ids(splits):
    return np.concatenate([np.asarray(splits.train), np.asarray(splits.val)]).tolist()


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_folder_round_trips_in_path_order_with_the_separator(corpus, tmp_path, kind):
    meta = prep.prepare(corpus, kind, tmp_path / "out", quiet=True)
    tok, splits, loaded = prep.load_prepared(tmp_path / "out")
    assert loaded == meta and meta["sources"] == ORDER
    assert isinstance(splits.train, np.memmap) and splits.train.dtype == np.uint16
    assert tok.decode(_all_ids(splits)) == prep.SEPARATORS[kind].join(TEXTS[n] for n in ORDER)
    n = meta["train_tokens"] + meta["val_tokens"]
    assert meta["train_tokens"] == int(0.9 * n) == len(splits.train)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_gpt2_pieces_encode_as_the_whole_text(corpus, tmp_path):
    prep.prepare(corpus, "gpt2", tmp_path / "out", quiet=True)
    tok, splits, _ = prep.load_prepared(tmp_path / "out")
    enc, expected = gpt2_encoding(), []
    for k, name in enumerate(ORDER):
        expected += ([50256] if k else []) + enc.encode_ordinary(TEXTS[name])
    assert [tok.ids[i] for i in _all_ids(splits)] == expected


def test_single_file_gives_the_in_memory_tokenizer_and_split(tmp_path, small_text):
    path = tmp_path / "t.txt"
    path.write_text(small_text)
    for kind in ("char", "gpt2"):
        prep.prepare(path, kind, tmp_path / kind, quiet=True)
        tok, splits, _ = prep.load_prepared(tmp_path / kind)
        mem_tok = build_tokenizer(kind, small_text)
        mem = split_ids(torch.tensor(mem_tok.encode(small_text)))
        assert tok.to_dict() == mem_tok.to_dict()
        assert np.array_equal(splits.train, mem.train.numpy()) and np.array_equal(splits.val, mem.val.numpy())


def test_large_character_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000]
    text = "".join(chars)
    (tmp_path / "big.txt").write_text(text)
    meta = prep.prepare(tmp_path / "big.txt", "char", tmp_path / "out", quiet=True)
    tok, splits, _ = prep.load_prepared(tmp_path / "out")
    assert meta["dtype"] == "uint32" and splits.train.dtype == np.uint32 and tok.vocab_size == len(set(chars))
    assert tok.decode(_all_ids(splits)) == text


def test_memmap_batches_equal_tensor_batches(tmp_path, small_text):
    (tmp_path / "t.txt").write_text(small_text)
    prep.prepare(tmp_path / "t.txt", "char", tmp_path / "out", quiet=True)
    _, splits, _ = prep.load_prepared(tmp_path / "out")
    ids = torch.from_numpy(np.asarray(splits.train, dtype=np.int64))
    x1, y1 = get_batch(splits.train, 8, 16, torch.Generator().manual_seed(3))
    x2, y2 = get_batch(ids, 8, 16, torch.Generator().manual_seed(3))
    assert x1.dtype == torch.long and torch.equal(x1, x2) and torch.equal(y1, y2)


def _rss_file_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    pytest.fail("no RssFile line in /proc/self/status (Linux 4.5 or newer has it)")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_memmap_batches_do_not_keep_the_file_in_the_process(tmp_path):
    path = tmp_path / "train.bin"
    np.random.default_rng(0).integers(0, 65, 16 << 20, dtype=np.uint16).tofile(path)  # 32 MB
    data = np.memmap(path, dtype=np.uint16, mode="r")
    g = torch.Generator().manual_seed(0)
    before = _rss_file_mb()
    for _ in range(200):  # 3,200 windows: mapped once and kept, they would pull in most of the file
        get_batch(data, 16, 256, g)
    assert _rss_file_mb() - before < 8


def test_training_from_the_memmap_matches_training_from_the_text(tmp_path, small_text):
    (tmp_path / "t.txt").write_text(small_text)
    prep.prepare(tmp_path / "t.txt", "char", tmp_path / "out", quiet=True)
    tok, mapped, _ = prep.load_prepared(tmp_path / "out")
    in_memory = split_ids(torch.tensor(tok.encode(small_text)))
    results = []
    for splits in (mapped, in_memory):
        run = Run.create(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32), tok,
                         splits, device="cpu", dtype="float32", seed=0)
        events = list(train(run, TrainConfig(max_iters=6, eval_interval=3, eval_iters=2, sample_every=0,
                                             batch_size=8, seed=5)))
        results.append(([e.loss for e in events if isinstance(e, Step)],
                        [e.val_loss for e in events if isinstance(e, Eval)], events[-1]))
    (steps_m, evals_m, done_m), (steps_t, evals_t, done_t) = results
    assert len(steps_m) == 6 and steps_m == steps_t and evals_m == evals_t
    assert isinstance(done_m, Done) and done_m.final_val_loss == done_t.final_val_loss


def test_full_validation_of_a_memmap_is_bounded(tmp_path, small_text, monkeypatch):
    (tmp_path / "t.txt").write_text(small_text * 3)
    prep.prepare(tmp_path / "t.txt", "char", tmp_path / "out", quiet=True)
    _, splits, _ = prep.load_prepared(tmp_path / "out")
    monkeypatch.setattr("minigpt.data.MEMMAP_VAL_TOKENS", 100)
    val = val_tensor(splits.val)
    assert len(splits.val) > 100 and val.dtype == torch.long
    assert val.tolist() == np.asarray(splits.val[:100]).tolist()


def test_failed_prepare_keeps_the_previous_output(corpus, tmp_path):
    prep.prepare(corpus, "char", tmp_path / "out", quiet=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    (corpus / "zz_bad.txt").write_bytes(b"caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(DataError, match="zz_bad.txt is not UTF-8"):
        prep.prepare(corpus, "char", tmp_path / "out", quiet=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # and no temporary files


def test_damaged_prepared_folder_is_refused(tmp_path, small_text):
    (tmp_path / "t.txt").write_text(small_text)
    prep.prepare(tmp_path / "t.txt", "char", tmp_path / "out", quiet=True)
    with open(tmp_path / "out" / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match="does not match its meta.json"):
        prep.load_prepared(tmp_path / "out")
    (tmp_path / "out" / "meta.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match="not written by"):
        prep.load_prepared(tmp_path / "out")


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        prep.prepare(tmp_path / "missing", "char", tmp_path / "out", quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        prep.prepare(tmp_path / "empty", "char", tmp_path / "out", quiet=True)
    (tmp_path / "nul.txt").write_bytes(b"a\x00b")
    with pytest.raises(DataError, match="binary"):
        prep.prepare(tmp_path / "nul.txt", "char", tmp_path / "out", quiet=True)


def test_cli_prepare_then_train_and_eval_on_the_folder(tmp_path, small_text, capsys):
    (tmp_path / "t.txt").write_text(small_text)
    assert main(["prepare", "--data", str(tmp_path / "t.txt"), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["vocab_size"] == len(set(small_text)) and summary["dtype"] == "uint16"
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(tmp_path / "out"), "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
                 "--block-size", "16", "--batch-size", "8", "--grad-accum", "2", "--max-iters", "4",
                 "--eval-interval", "2", "--eval-iters", "1", "--device", "cpu", "--out", str(ckpt)]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", str(ckpt), "--data", str(tmp_path / "out")]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["val_loss"] == round(trained["val_loss"], 4)
    assert main(["eval", str(ckpt), "--data", str(tmp_path / "t.txt")]) == 0  # the same split, from the text
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == evaluated
    assert main(["train", "--data", str(tmp_path), "--max-iters", "1", "--out", str(ckpt)]) == 2  # not prepared
    assert "prepare it first" in capsys.readouterr().err
