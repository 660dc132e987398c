"""`python -m minigpt download`: fetches the data files with their sha256 checked, and fails clearly offline.

Never touches the internet: the files are served from 127.0.0.1, and "offline" is a local port nobody listens on.
"""

import functools
import hashlib
import http.server
import threading

import pytest

from conftest import free_port
from minigpt import data
from minigpt.cli import EXIT_USER_ERROR, main

FILES = {"shakespeare.txt": b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50,
         "ranks.tiktoken": b"IQ== 0\nIg== 1\n" * 40}


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server holding FILES; yields its base URL."""
    root = tmp_path / "served"
    root.mkdir()
    for name, payload in FILES.items():
        (root / name).write_bytes(payload)
    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(d))
    return d


def point_at(monkeypatch, base, sha=None):
    monkeypatch.setattr(data, "SHAKESPEARE_URL", f"{base}/shakespeare.txt")
    monkeypatch.setattr(data, "GPT2_RANKS_URL", f"{base}/ranks.tiktoken")
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", sha or hashlib.sha256(FILES["shakespeare.txt"]).hexdigest())
    monkeypatch.setattr(data, "GPT2_RANKS_SHA256", sha or hashlib.sha256(FILES["ranks.tiktoken"]).hexdigest())


def test_download_fetches_both_files_checks_them_and_says_where(server, data_dir, monkeypatch, capsys):
    point_at(monkeypatch, server)
    assert main(["download"]) == 0
    out = capsys.readouterr().out
    assert (data_dir / "tinyshakespeare.txt").read_bytes() == FILES["shakespeare.txt"]
    assert (data_dir / "gpt2.tiktoken").read_bytes() == FILES["ranks.tiktoken"]
    assert str(data_dir / "tinyshakespeare.txt") in out and str(data_dir / "gpt2.tiktoken") in out
    assert "sha256 ok" in out
    # Run again: good copies are kept, not fetched again.
    assert main(["download"]) == 0
    assert capsys.readouterr().out.count("already there") == 2


def test_a_damaged_copy_is_replaced(server, data_dir, monkeypatch, capsys):
    point_at(monkeypatch, server)
    data_dir.mkdir()
    (data_dir / "tinyshakespeare.txt").write_text("half a file")
    assert main(["download"]) == 0
    assert (data_dir / "tinyshakespeare.txt").read_bytes() == FILES["shakespeare.txt"]


def test_a_file_with_the_wrong_sha256_is_refused_and_not_saved(server, data_dir, monkeypatch, capsys):
    point_at(monkeypatch, server, sha="0" * 64)
    assert main(["download"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "sha256" in err[0] and "not saved" in err[0]
    assert not (data_dir / "tinyshakespeare.txt").exists()


def test_offline_it_exits_2_with_one_clear_line(data_dir, monkeypatch, capsys):
    point_at(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert main(["download", "--timeout", "5"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download" in err[0]
    assert str(data_dir / "tinyshakespeare.txt") in err[0]  # where to put the file by hand
    assert not (data_dir / "tinyshakespeare.txt").exists()
