"""Recovery after a crash: remove the temporary files a killed process left behind, at start.

Every temporary file minigpt writes (atomic saves of checkpoints, downloads and prepared data, the
write checks before training, the page's saves) is named `.<name>.<pid>.<random>.minigpt-tmp`: hidden,
recognisable, and carrying the writer's process id. `clean_leftovers` removes such a file when its
writer is dead (a `kill -9` during a save), or when it is older than `max_age_s` whatever its pid says
(the pid may have been reused); a live process's save in progress is never touched, and neither is
any file that does not carry the mark: finished checkpoints are never removed. Nothing follows links.

The playground calls `clean_at_start(save_root)` once before serving (see `app_folders`).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from .data import TMP_MARK, data_dir

LEGACY_SUFFIX = ".tmp"  # before the pid and the mark: `.<name>.<random>.tmp`, removed only once old
ROOT = Path(__file__).resolve().parents[1]


def writer_pid(name: str) -> int | None:
    """The pid in a temporary file's name, or None if the name does not carry one."""
    if not (name.startswith(".") and name.endswith(TMP_MARK)):
        return None
    parts = name[: -len(TMP_MARK)].rsplit(".", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_leftover(path: Path, now: float, max_age_s: float) -> bool:
    """True for a temporary file of ours whose writer is gone (or that is too old to be in progress)."""
    name = path.name
    if not name.startswith("."):
        return False
    try:
        st = path.lstat()
    except OSError:
        return False
    if not path.is_file() or path.is_symlink():
        return False
    old = now - st.st_mtime > max_age_s
    if name.endswith(TMP_MARK):
        pid = writer_pid(name)
        if pid is None or pid == os.getpid():
            return old
        return old or not pid_alive(pid)
    return name.endswith(LEGACY_SUFFIX) and old


def clean_leftovers(folders, max_depth: int = 2, max_age_s: float = 6 * 3600) -> list[Path]:
    """Remove the leftover temporary files in `folders` (and their subfolders down to max_depth);
    return what was removed. Missing folders are skipped; a file that cannot be removed is left."""
    now, removed = time.time(), []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        base = len(folder.parts)
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            if len(Path(dirpath).parts) - base >= max_depth:
                dirnames[:] = []
            for name in filenames:
                p = Path(dirpath) / name
                if is_leftover(p, now, max_age_s):
                    try:
                        p.unlink()
                        removed.append(p)
                    except OSError:
                        pass
    return removed


def app_folders(save_root) -> list[Path]:
    """Where the playground and the library write: the shipped checkpoints, the data directory (and its
    rescued/ saves), the page's per-session save folders, runs/ and the temp folder's rescued saves."""
    return [ROOT / "checkpoints", ROOT / "runs", data_dir(), Path(save_root),
            Path(tempfile.gettempdir()) / "minigpt-rescued"]


def clean_at_start(save_root) -> list[Path]:
    """What the playground runs once before serving: clean every folder it writes to."""
    return clean_leftovers(app_folders(save_root))
