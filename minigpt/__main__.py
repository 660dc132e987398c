"""`python -m minigpt ...`: see minigpt/cli.py."""

import os
import sys

from . import prepare_torch_env

prepare_torch_env()  # before anything loads torch

from .cli import main  # noqa: E402

code = main()
# Leave without tearing the interpreter down: with torch loaded that takes 0.4-1 s (modules and
# tensors freed one by one), 3-4% of a 20-s target run. What a command writes is already written
# (checkpoints atomically, with fsync); only the standard streams are left to flush. An exception
# (argparse's exit, Ctrl-C) never gets here and leaves the usual way.
try:
    sys.stdout.flush()
    sys.stderr.flush()
except BrokenPipeError:  # e.g. `python -m minigpt sample | head`
    pass
os._exit(code or 0)
