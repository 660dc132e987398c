"""Data: the data directory, verified downloads, text loading, the train/val split and batches.

torch is imported inside the functions that use it: the page's cold start needs the paths and
text helpers here before torch is loaded (minigpt/ui/common.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
GPT2_RANKS_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
TRAIN_FRACTION = 0.9  # first 90% trains, last 10% validates (as in the lecture)
MEMMAP_VAL_TOKENS = 1 << 20  # the end-of-run full validation reads at most this many tokens of a memmap


class DataError(ValueError):
    """A data source that cannot be used; the message says why."""


TMP_MARK = ".minigpt-tmp"  # every temporary file minigpt writes ends so (see minigpt/recovery.py)


def tmp_prefix(name: str) -> str:
    """The start of a temporary file's name for `name`: hidden, and with the writer's pid, so a cleanup
    at start can tell a dead process's leftover from a live process's save in progress."""
    return f".{name}.{os.getpid()}."


def data_dir() -> Path:
    """$MINIGPT_DATA_DIR, else ~/.cache/minigpt."""
    return Path(os.environ.get("MINIGPT_DATA_DIR") or Path.home() / ".cache" / "minigpt").expanduser()


@contextlib.contextmanager
def atomic_file(path: Path):
    """A file object whose contents appear at `path` only if the block ends without an error:
    written to a temporary file in the same folder, fsynced, renamed. Old file or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=tmp_prefix(path.name), suffix=TMP_MARK)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a checkpoint is an ordinary readable file
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see atomic_file)."""
    with atomic_file(path) as f:
        f.write(data)


def download(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> Path:
    """Fetch url into dest (atomically) after checking its sha256; OSError with a clear message."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            payload = r.read()
    except OSError as e:
        raise OSError(f"could not download {url} ({e}); put the file at {dest} "
                      f"or set MINIGPT_DATA_DIR to a folder that has it") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != sha256:
        raise OSError(f"download of {url} has sha256 {digest}, expected {sha256}; not saved")
    atomic_write(dest, payload)
    return dest


def ensure_shakespeare() -> Path:
    path = data_dir() / "tinyshakespeare.txt"
    return path if path.exists() else download(SHAKESPEARE_URL, path, SHAKESPEARE_SHA256)


def ensure_gpt2_ranks() -> Path:
    path = data_dir() / "gpt2.tiktoken"
    return path if path.exists() else download(GPT2_RANKS_URL, path, GPT2_RANKS_SHA256)


def decode_text(raw: bytes, name: str = "the text", max_bytes: int | None = None) -> str:
    """Bytes → text for training: must be UTF-8, not binary, not empty, not over max_bytes."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise DataError(f"{name} is {len(raw) / 1e6:.1f} MB, over the limit of {max_bytes / 1e6:.1f} MB")
    if b"\x00" in raw:
        raise DataError(f"{name} looks binary (it contains NUL bytes); use a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name} is not UTF-8 text (bad byte at position {e.start})") from None
    if not text.strip():
        raise DataError(f"{name} is empty")
    return text


def load_text(source: str, max_bytes: int | None = None) -> str:
    """'shakespeare' (downloaded on first use) or the path of a UTF-8 text file."""
    if source == "shakespeare":
        path = ensure_shakespeare()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"no such text file: {source} (use 'shakespeare' or a path)")
    return decode_text(path.read_bytes(), name=str(path), max_bytes=max_bytes)


@dataclass
class Splits:
    """Token ids of the training and validation parts: 1-D int64 tensors, or numpy memmaps of a
    prepared data folder (minigpt/prepare.py), read window by window so memory stays flat."""
    train: torch.Tensor | np.ndarray
    val: torch.Tensor | np.ndarray


def val_tensor(val: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The validation ids as a tensor for the full-validation protocol; of a memmap, only the first
    MEMMAP_VAL_TOKENS, so the end-of-run evaluation stays bounded on a huge validation split."""
    import torch
    if isinstance(val, torch.Tensor):
        return val
    return torch.from_numpy(np.asarray(val[:MEMMAP_VAL_TOKENS], dtype=np.int64))


def encode_ids(tokenizer, text: str):
    """`tokenizer.encode(text)` as a 1-D int64 tensor, raising the same error for an unknown character:
    through the tokenizer's one-byte packing where its ids fit a byte (`encode_bytes`)."""
    import torch
    packed = tokenizer.encode_bytes(text) if text else None
    if packed is None:
        return torch.tensor(tokenizer.encode(text), dtype=torch.long)
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8).long()


def split_ids(ids, fraction: float = TRAIN_FRACTION) -> Splits:
    import torch
    data = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids, dtype=torch.long)
    n = int(fraction * len(data))
    return Splits(train=data[:n], val=data[n:])


def _fresh_map(data: np.memmap) -> np.ndarray:
    """A new mapping of the file behind `data`, dropped after the batch (~25 µs): the pages read stay
    in the OS cache but leave this process, whose RSS would otherwise grow to the size of the file
    (nanoGPT does the same). A view into a memmap has no file offset of its own: used as it is."""
    if data.base is not data._mmap:
        return data
    return np.memmap(data.filename, dtype=data.dtype, mode="r", offset=data.offset, shape=data.shape)


def get_batch(data: torch.Tensor | np.ndarray, batch_size: int, block_size: int,
              generator: torch.Generator | None = None, device="cpu"):
    """Random windows: x = data[i:i+T], y = data[i+1:i+T+1], gathered in one indexing op.

    A memmap gives the same windows as the tensor of the same ids (same draws), read from disk."""
    import torch
    if len(data) <= block_size + 1:
        raise DataError(f"the text has {len(data)} tokens, too few for a context of {block_size}; "
                        f"use more text or a shorter context")
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    if isinstance(data, np.ndarray):
        data = _fresh_map(data) if isinstance(data, np.memmap) else data
        window = torch.from_numpy(data[ix.numpy()[:, None] + np.arange(block_size + 1)].astype(np.int64))
    else:
        offsets = ix[:, None] + torch.arange(block_size + 1)
        window = data[offsets]  # (B, T+1)
    x, y = window[:, :-1], window[:, 1:]
    if str(device) != "cpu":
        x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y
