"""The playground's figures are safe to draw from many server threads at once."""

import os
import subprocess
import sys

from conftest import ROOT

RACE = """
import io, threading
from minigpt import plots, experiment_plots
errors = []
def draw():
    try:
        for _ in range(30):
            fig = plots._figure(2, 2)
            fig.savefig(io.BytesIO(), format="webp")
            experiment_plots._figure(2, 2)
    except Exception as e:
        errors.append(repr(e))
def import_pyplot():  # what Gradio's Plot does, lazily, in a worker thread
    try:
        import matplotlib.pyplot
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=f) for f in (draw, import_pyplot, draw, draw)]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors)
"""


def test_figures_drawn_while_another_thread_imports_pyplot():
    # A fresh interpreter: the race is with pyplot's first import (it once failed with "partially
    # initialized module 'matplotlib.pyplot'" when a figure builder called matplotlib.use()).
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # library use: no backend chosen
    r = subprocess.run([sys.executable, "-c", RACE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
