"""Recovery after a crash, end to end: `kill -9` a running `python app.py` while it trains, with a
half-written save of a killed process in its save folder; a restarted `python app.py` serves
normally (model info, Compare, Save), and the start-up cleanup removes the leftover and nothing else."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT, free_port, wait_for  # noqa: E402

from minigpt.checkpoint import load_checkpoint  # noqa: E402
from minigpt.data import TMP_MARK  # noqa: E402
from minigpt.recovery import clean_leftovers  # noqa: E402

TRAIN = dict(data="shakespeare", text="", upload=None, tokenizer="char", model="gpt", n_embd=32, n_head=2, n_layer=1,
             block_size=32, dropout=0.0, batch_size=8, lr=3e-3, budget="seconds", amount=120, eval_interval=50,
             seed=1)


def start_app(tmp_path, log_name):
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(tmp_path / "tmp")}
    log = open(tmp_path / log_name, "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    import httpx

    def up():
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None
    assert wait_for(up, timeout=180, every=0.5) and proc.poll() is None, (tmp_path / log_name).read_text()[-2000:]
    return proc, url


@pytest.mark.slow
def test_kill_9_while_training_then_a_restart_serves_and_cleans_up(tmp_path):
    from gradio_client import Client
    (tmp_path / "tmp").mkdir()
    save_root = tmp_path / "tmp" / "minigpt-app"
    proc, url = start_app(tmp_path, "first.log")
    try:
        c = Client(url, verbose=False)
        job = c.submit(**TRAIN, api_name="/train")
        assert wait_for(lambda: len(job.outputs()) >= 2, timeout=120), "training did not stream"
        saved = Path(c.predict(api_name="/save"))  # a finished save of the first server, mid-training
        # A save killed half-way leaves a temporary file: made here by a process that is then gone.
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        folder = next(p for p in save_root.iterdir() if p.is_dir())
        leftover = folder / f".minigpt-shipped.safetensors.{dead.pid}.x1y2z3{TMP_MARK}"
        leftover.write_bytes(b"half a checkpoint")
        finished = list(folder.glob("*.safetensors"))
        assert finished and saved.name == finished[0].name
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 while it trains
        proc.wait()
    assert leftover.exists()
    proc, url = start_app(tmp_path, "second.log")
    try:
        # The start-up cleanup (clean_at_start(SAVE_ROOT) in app.py) removed the leftover, and only it.
        assert not leftover.exists()
        assert all(p.exists() for p in finished)
        c = Client(url, verbose=False)
        assert c.predict(api_name="/model_info")[0]["source"].startswith("shipped")
        _, results, *_ = c.predict(prompt="ROMEO:", tokens=20, seed=1, strategies=["greedy", "multinomial"], low_t=0.5,
                                   high_t=2.0, top_k=10, top_p=0.9, colour=False, use_cache=True,
                                   api_name="/compare_sampling")
        assert [r["tokens"] for r in results] == [20, 20]
        assert load_checkpoint(c.predict(api_name="/save")).config.n_layer > 0
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert clean_leftovers([save_root]) == []  # nothing left to clean
    assert all(p.exists() for p in finished)
    assert load_checkpoint(finished[0]).config.n_layer > 0
