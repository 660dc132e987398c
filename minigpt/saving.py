"""Never lose a run: check that the output can be written before training, and save elsewhere if it fails.

- `check_writable(path)` before the first step: refuses (OutputError, one line) a path that is a
  folder, a path under a regular file, a folder that cannot be created and a folder that cannot be
  written, by really creating (and removing) a temporary file where the checkpoint will go.
- `save_with_fallback(path, write)` at the end: when writing `path` fails anyway (disk full, the
  folder made unwritable during the run), the model goes to the data directory's `rescued/`, else
  the temp folder, and the note says where; when nothing can be written, OutputError says in one
  line what was not saved and why.
- `session_save_dir(root, key)` is the page's Save folder: per session, checked, with a fresh temp
  folder as the fallback.
- `sigterm_interrupts()` / `signals_ignored()`: SIGTERM (timeout, container stops, Space restarts)
  saves as Ctrl-C does, and a second signal does not cut the save short.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from .data import TMP_MARK, data_dir, tmp_prefix


class OutputError(ValueError):
    """An output that cannot be written; the message says which and why, in one line."""


def _reason(e: OSError) -> str:
    return e.strerror or (errno.errorcode.get(e.errno, "") if e.errno else "") or str(e) or type(e).__name__


def probe_folder(folder: Path) -> None:
    """Create the folder if needed and write (then remove) a temporary file in it; OSError if not possible."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=tmp_prefix("write-check"), suffix=TMP_MARK)
    try:
        os.write(fd, b"minigpt")
    finally:
        os.close(fd)
        os.unlink(tmp)


def check_writable(path, label: str = "--out") -> Path:
    """`path` as a Path if a file can be written there; OutputError (one line) otherwise."""
    raw = os.fspath(path)
    p = Path(raw).expanduser()
    if not raw.strip():
        raise OutputError(f"{label} is empty: give the checkpoint's file name, e.g. runs/model.safetensors")
    if raw.endswith(("/", os.sep)) or p.is_dir():
        raise OutputError(f"{label} {raw} is a folder: give a file name in it, e.g. {p / 'model.safetensors'}")
    if p.exists() and not p.is_file():
        raise OutputError(f"{label} {raw} exists and is not a regular file")
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise OutputError(f"cannot write {label} {raw}: {anc} is a file, not a folder")
    try:
        probe_folder(p.parent)
    except OSError as e:
        what = "created" if not p.parent.is_dir() else "written"
        raise OutputError(f"cannot write {label} {raw}: the folder {p.parent} cannot be {what} "
                          f"({_reason(e)})") from None
    return p


def fallback_dirs() -> list[Path]:
    """Where a checkpoint goes when its own path fails at the end: the data directory, then the temp folder."""
    return [data_dir() / "rescued", Path(tempfile.gettempdir()) / "minigpt-rescued"]


def save_with_fallback(path, write: Callable[[Path], Path], what: str = "the model",
                       fallbacks: list[Path] | None = None) -> tuple[Path, str | None]:
    """(where it was saved, None) after `write(path)`; if that raises OSError, (the fallback path, a
    one-line note saying where and why). OutputError (one line) if no place could be written."""
    path = Path(path)
    try:
        return write(path), None
    except OSError as e:
        first = e
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tried = []
    for folder in fallbacks if fallbacks is not None else fallback_dirs():
        alt = folder / f"{path.stem}-{stamp}-{os.getpid()}{path.suffix or '.safetensors'}"
        tried.append(str(folder))
        try:
            written = write(alt)
        except OSError:
            continue
        return written, f"could not write {path} ({_reason(first)}): {what} was saved to {written} instead"
    raise OutputError(f"{what} was NOT saved: writing {path} failed ({_reason(first)}) and so did the fallbacks "
                      f"{', '.join(tried)}")


def session_save_dir(root, key: str) -> Path:
    """The folder the page's Save writes this session's checkpoint into: root/<hash of key>, checked by
    writing a file; if that fails, a fresh folder in the temp folder. OutputError if neither works."""
    folder = Path(root) / hashlib.sha1(key.encode()).hexdigest()[:16]
    try:
        probe_folder(folder)
        return folder
    except OSError as e:
        first = e
    try:
        folder = Path(tempfile.mkdtemp(prefix="minigpt-save-"))
        probe_folder(folder)
        return folder
    except OSError as e:
        raise OutputError(f"the checkpoint cannot be saved on this server: {root} ({_reason(first)}) and the temp "
                          f"folder ({_reason(e)}) cannot be written") from None


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_interrupts():
    """Inside, SIGTERM raises KeyboardInterrupt("SIGTERM"), as Ctrl-C raises KeyboardInterrupt."""
    if not _on_main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def signals_ignored():
    """Inside, Ctrl-C and SIGTERM are ignored: a save in progress is not cut short by a second signal."""
    if not _on_main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
