"""What the load tests share: `python app.py` in a subprocess, timed calls, and the figures of a run."""

import contextlib
import json
import os
import ssl
import statistics
import subprocess
import sys
import threading
import time

from conftest import ROOT, free_port, wait_for

from minigpt.bench import stop_process


# One TLS context for every client of a load test. gradio_client opens an httpx connection per call and,
# by default, each one builds a TLS context from the CA bundle (~15 ms of CPU) even for plain http:
# 30 clients in one process then spent most of their CPU, under their one interpreter lock, on that
# (cProfile/py-spy: ssl.create_default_context was 44% of the client's samples), on the cores the server
# needs. A browser does none of it; handing httpx a ready context skips it.
LOCAL_TLS = ssl.create_default_context()


def client(url: str, **kwargs):
    """A gradio_client Client for a load test: quiet, a 120 s timeout, the shared TLS context."""
    from gradio_client import Client
    return Client(url, verbose=False, ssl_verify=LOCAL_TLS, httpx_kwargs={"timeout": 120}, **kwargs)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, its threads included), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def percentile(values, q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


@contextlib.contextmanager
def app_server(log_path, extra_env: dict | None = None, timeout: float = 180):
    """`python app.py` on a free port of 127.0.0.1, its output in `log_path`: yields (process, url)
    once the page answers HTTP 200, and stops it at the end."""
    import httpx

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_HEARTBEAT_INTERVAL": "1", **(extra_env or {})}
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "w") as log:  # the server's own account, for when something fails
        server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            def up():
                try:
                    return httpx.get(url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    return server.poll() is not None  # give up waiting if it died
            assert wait_for(up, timeout=timeout, every=0.5) and server.poll() is None, \
                f"the server did not start: see {log_path}"
            yield server, url
        finally:
            stop_process(server, grace=20)


def reported(load_test, path) -> dict:
    """Run `load_test()`, write its report as JSON to `path` and print it; the server must have lived
    through it and answered every request without an error."""
    report = load_test()
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    assert report["server_alive"]
    assert report["errors"] == 0, report["error_messages"]
    return report


def timed(record, name: str, call, check) -> None:
    """Run `call()`, then `record(name, seconds, error or None)`; an exception is recorded, not raised."""
    t0 = time.monotonic()
    try:
        ok = check(call())
        record(name, time.monotonic() - t0, None if ok else "unexpected answer")
    except Exception as e:  # counted: the report says what failed
        record(name, time.monotonic() - t0, f"{type(e).__name__}: {e}")


def figures(results) -> dict:
    """Per endpoint, from (name, seconds, error, ...) records: errors, count, p50, p95 and max seconds."""
    by_name = {}
    for name, secs, *_ in results:
        by_name.setdefault(name, []).append(secs)
    errors = [f"{name}: {err}" for name, _, err, *_ in results if err]
    return {"requests": len(results), "errors": len(errors), "error_messages": errors[:20],
            "errors_by_endpoint": {k: sum(1 for n, _, e, *_ in results if n == k and e) for k in by_name},
            "count": {k: len(v) for k, v in by_name.items()},
            "p50_s": {k: round(statistics.median(v), 2) for k, v in by_name.items()},
            "p95_s": {k: round(percentile(v, 0.95), 2) for k, v in by_name.items()},
            "max_s": {k: round(max(v), 2) for k, v in by_name.items()}}


def run_all(target, n: int, timeout: float, what: str = "a client") -> None:
    """Run `target(i)` for i in range(n) in n threads at once and wait for them; none may hang."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), f"{what} hung"
