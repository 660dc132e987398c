"""Data: the split, vectorised batches, text checks, verified atomic downloads."""

import hashlib

import pytest
import torch

from minigpt import data
from minigpt.data import DataError, decode_text, get_batch, split_ids


def test_split_is_first_90_percent_train():
    s = split_ids(list(range(100)))
    assert s.train.tolist() == list(range(90)) and s.val.tolist() == list(range(90, 100))


def test_batches_are_shifted_windows_and_reproducible():
    d = torch.arange(1000)
    x, y = get_batch(d, 8, 16, torch.Generator().manual_seed(3))
    assert x.shape == (8, 16) and torch.equal(y, x + 1)
    assert torch.equal((x[:, 1:] - x[:, :-1]), torch.ones(8, 15, dtype=torch.long))
    x2, _ = get_batch(d, 8, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)


def test_too_short_text_for_the_context():
    with pytest.raises(DataError, match="too few"):
        get_batch(torch.arange(10), 2, 16)


@pytest.mark.parametrize("raw,words", [(b"", "empty"), (b"   \n", "empty"), (b"ab\x00cd", "binary"),
                                       (b"\xff\xfe", "UTF-8"), (b"x" * 100, "limit")])
def test_bad_text_is_refused(raw, words):
    with pytest.raises(DataError, match=words):
        decode_text(raw, max_bytes=50)


def test_shakespeare_comes_from_the_data_dir():
    text = data.load_text("shakespeare")
    assert len(text.encode()) == 1_115_394
    assert hashlib.sha256(text.encode()).hexdigest() == data.SHAKESPEARE_SHA256


def test_missing_file_downloads_verifies_and_writes_atomically(tmp_path, monkeypatch):
    payload = b"to be or not to be\n"

    class Response:
        def __init__(self, body):
            self.body = body
        def __enter__(self):
            return self
        def __exit__(self, *a):
            return False
        def read(self):
            return self.body

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: Response(payload))
    dest = tmp_path / "f.txt"
    data.download("http://example.invalid/f", dest, hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload
    with pytest.raises(OSError, match="sha256"):
        data.download("http://example.invalid/f", tmp_path / "g.txt", "0" * 64)
    assert not (tmp_path / "g.txt").exists() and list(tmp_path.iterdir()) == [dest]


def test_offline_download_gives_a_clear_error(tmp_path, monkeypatch):
    def fail(url, timeout):
        raise OSError("network unreachable")
    monkeypatch.setattr(data.urllib.request, "urlopen", fail)
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path))
    with pytest.raises(OSError, match="MINIGPT_DATA_DIR"):
        data.load_text("shakespeare")
