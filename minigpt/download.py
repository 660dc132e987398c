"""`python -m minigpt download`: fetch the data files ahead of time, for a classroom without internet.

Tiny Shakespeare and the GPT-2 BPE ranks go into the data directory ($MINIGPT_DATA_DIR, default
~/.cache/minigpt), each checked against its sha256 and written atomically (the same verified
download the library does on first use). A file already there with the right sha256 is kept.
Offline, it exits 2 with one line saying what to do. Core module: imports minigpt.data only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from . import data


def sources() -> list[tuple[str, str, str]]:
    """(file name in the data directory, URL, sha256) of every file minigpt may download."""
    return [("tinyshakespeare.txt", data.SHAKESPEARE_URL, data.SHAKESPEARE_SHA256),
            ("gpt2.tiktoken", data.GPT2_RANKS_URL, data.GPT2_RANKS_SHA256)]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_all(force: bool = False, timeout: float = 30.0, say=print) -> list[Path]:
    """Download every missing (or damaged, or with `force` every) data file; the paths, in order."""
    folder = data.data_dir()
    done = []
    for name, url, sha in sources():
        dest = folder / name
        if dest.exists() and not force and sha256_of(dest) == sha:
            say(f"{dest} (already there, sha256 ok)")
        else:
            data.download(url, dest, sha, timeout=timeout)
            say(f"{dest} ({dest.stat().st_size:,} bytes from {url}, sha256 ok)")
        done.append(dest)
    return done


HELP = "fetch Tiny Shakespeare and the GPT-2 BPE ranks into the data directory"
DETAILS = ("($MINIGPT_DATA_DIR, default ~/.cache/minigpt) ahead of time, so training and the Tokenizer tab work "
           "offline; each file is checked against its sha256. Example: python -m minigpt download")


def register(subparsers):
    p = subparsers.add_parser("download", help=HELP, description=f"{HELP[0].upper()}{HELP[1:]} {DETAILS}")
    p.add_argument("--force", action="store_true", help="download again even when a good copy is there")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each server (default 30)")
    p.set_defaults(func=run)


def run(args) -> int:
    paths = fetch_all(force=args.force, timeout=args.timeout)
    print(f"{len(paths)} files in {data.data_dir()}")
    return 0
