"""`python -m minigpt ...`: see minigpt/cli.py."""

import sys

from .cli import main

sys.exit(main())
