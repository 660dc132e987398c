"""Prepared data: a big text encoded once into `train.bin` / `val.bin` + `meta.json`, read by memmap.

    python -m minigpt prepare --data corpus/ --tokenizer char --out data/corpus
    python -m minigpt train --data data/corpus --out runs/corpus.safetensors

The source is a UTF-8 text file or a folder of .txt files (all of them, recursively, in sorted
order of their paths), joined by SEPARATORS[tokenizer]: a newline for char, GPT-2's end-of-text
token for gpt2. Nothing is held whole in memory: two streaming passes over the text.
  1. Encode, counting tokens and collecting the vocabulary (char: the characters used; gpt2: the
     GPT-2 ids used, written to a temporary file). The token count then fixes the split.
  2. Write the ids (char: encoding again; gpt2: renumbering the temporary file into the compact
     vocabulary, as BPETokenizer.from_text does) to train.bin (the first 90% of the tokens) and
     val.bin (the rest): exactly the split of the in-memory path.
The .bin files hold uint16 ids (uint32 when the vocabulary has more than 65,536 tokens), and
meta.json the tokenizer. Outputs are written to temporary files and renamed; meta.json is removed
first and written last, so a folder with a meta.json is always complete.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import __version__
from .data import TMP_MARK, TRAIN_FRACTION, DataError, Splits, atomic_file, atomic_write, tmp_prefix
from .tokenizers import GPT2_EOT, GPT2_VOCAB, BPETokenizer, CharTokenizer, tokenizer_from_dict

META = "meta.json"
FORMAT = "minigpt-prepared"
SEPARATORS = {"char": "\n", "gpt2": "<|endoftext|>"}  # between two files of a folder
READ_BYTES = 1 << 20    # bytes read at a time
MAX_CHAR = 0x110000     # one past the last Unicode code point


# ---- reading the source -------------------------------------------------------------------------

def source_files(source) -> list[Path]:
    """The text files of `source`: the file itself, or a folder's .txt files in sorted path order."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"no such file or folder: {source}")
    files = sorted((p for p in path.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise DataError(f"{source} has no .txt files")
    return files


def read_text(path: Path, on_bytes=lambda n: None):
    """The text of `path` in pieces of about READ_BYTES, checked as read_text would (UTF-8, no NUL)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(READ_BYTES)
            if b"\x00" in raw:
                raise DataError(f"{path} looks binary (it contains NUL bytes); use UTF-8 text files")
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text (bad byte at position {offset + e.start})") from None
            offset += len(raw)
            on_bytes(len(raw))
            if text:
                yield text
            if not raw:
                return


def bpe_safe_cut(text: str) -> int:
    """Where `text` can be cut so GPT-2 BPE encodes both parts as it would the whole: just after a
    single newline between two non-space characters (the pre-tokenizer always splits there; see
    GPT2_PATTERN). 0 when there is no such place."""
    i = len(text) - 1
    while i > 0:
        i = text.rfind("\n", 0, i)
        if i > 0 and i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
    return 0


def read_bpe_pieces(path: Path, on_bytes=lambda n: None):
    """The text of `path` in pieces cut only where BPE is unaffected by the cut (a line with no
    such place is kept whole until one comes)."""
    rest = ""
    for text in read_text(path, on_bytes):
        rest += text
        cut = bpe_safe_cut(rest)
        if cut:
            yield rest[:cut]
            rest = rest[cut:]
    if rest:
        yield rest


def codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


# ---- writing ------------------------------------------------------------------------------------

class Progress:
    """A one-line progress meter on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, label: str, total: int, quiet: bool = False):
        self.label, self.total, self.quiet = label, max(total, 1), quiet
        self.done, self.t0, self.shown = 0, time.monotonic(), -1.0
        self.tty = sys.stderr.isatty()

    def __call__(self, n: int):
        self.done += n
        if self.quiet:
            return
        frac = min(self.done / self.total, 1.0)
        now = time.monotonic()
        if (self.tty and now - self.shown >= 0.2) or (not self.tty and int(frac * 10) > int(self.shown * 10)):
            self.shown = now if self.tty else frac
            rate = self.done / max(now - self.t0, 1e-9) / 1e6
            end = "\r" if self.tty else "\n"
            print(f"{self.label}: {frac:6.1%} ({self.done / 1e6:,.1f} / {self.total / 1e6:,.1f} MB, "
                  f"{rate:.1f} MB/s)", end=end, file=sys.stderr, flush=True)

    def close(self):
        if self.tty and not self.quiet:  # the last state, then a newline
            self.shown = -1.0
            self(0)
            print(file=sys.stderr)


class SplitWriter:
    """Writes a stream of ids: the first `n_train` to one file, the rest to another."""

    def __init__(self, n_train: int, train_file, val_file, dtype):
        self.left, self.train_file, self.val_file, self.dtype = n_train, train_file, val_file, dtype

    def write(self, ids: np.ndarray):
        ids = ids.astype(self.dtype, copy=False)
        head = ids[:self.left]
        self.train_file.write(head.tobytes())
        self.left -= len(head)
        self.val_file.write(ids[len(head):].tobytes())


# ---- the two passes -----------------------------------------------------------------------------

def _char_pass1(files, progress):
    seen = np.zeros(MAX_CHAR, dtype=bool)
    count = 0
    for path in files:
        for text in read_text(path, progress):
            cps = codepoints(text)
            seen[cps] = True
            count += len(cps)
    if len(files) > 1:
        seen[ord(SEPARATORS["char"])] = True
        count += len(files) - 1
    return np.flatnonzero(seen), count


def _char_pass2(files, vocab: np.ndarray, out: SplitWriter, progress) -> int:
    lut = np.full(MAX_CHAR, len(vocab), dtype=np.uint32)  # len(vocab) marks a character not seen in pass 1
    lut[vocab] = np.arange(len(vocab), dtype=np.uint32)
    count = 0
    for k, path in enumerate(files):
        if k:
            out.write(lut[[ord(SEPARATORS["char"])]])
            count += 1
        for text in read_text(path, progress):
            ids = lut[codepoints(text)]
            if (ids == len(vocab)).any():
                raise DataError(f"{path} changed while it was being prepared; run prepare again")
            out.write(ids)
            count += len(ids)
    return count


def _gpt2_pass1(files, tmp_file, progress):
    enc = BPETokenizer().enc
    seen = np.zeros(GPT2_VOCAB, dtype=bool)
    count = 0
    for k, path in enumerate(files):
        if k:
            tmp_file.write(np.array([GPT2_EOT], dtype=np.uint16).tobytes())
            count += 1
        for piece in read_bpe_pieces(path, progress):
            ids = np.array(enc.encode_ordinary(piece), dtype=np.uint16)  # GPT-2 ids are < 65,536
            seen[ids] = True
            tmp_file.write(ids.tobytes())
            count += len(ids)
    seen[GPT2_EOT] = True  # the compact vocabulary always keeps end-of-text, as BPETokenizer.from_text does
    return np.flatnonzero(seen), count


def _gpt2_pass2(tmp_path: Path, used: np.ndarray, out: SplitWriter, progress) -> int:
    lut = np.zeros(GPT2_VOCAB, dtype=np.uint32)
    lut[used] = np.arange(len(used), dtype=np.uint32)
    count = 0
    with open(tmp_path, "rb") as f:
        while len(gids := np.fromfile(f, dtype=np.uint16, count=max(READ_BYTES // 2, 1))):
            out.write(lut[gids])
            count += len(gids)
            progress(2 * len(gids))
    return count


def prepare(source, kind: str, out_dir, quiet: bool = False) -> dict:
    """Encode `source` (a text file or a folder of .txt files) into `out_dir`; returns the meta dict."""
    if kind not in SEPARATORS:
        raise ValueError(f"tokenizer must be one of {', '.join(SEPARATORS)}, got {kind!r}")
    files = source_files(source)
    total_bytes = sum(p.stat().st_size for p in files)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # 1. Encode once to count tokens and collect the vocabulary.
        p1 = Progress("prepare 1/2 (vocabulary)" if kind == "char" else "prepare 1/2 (encode)", total_bytes, quiet)
        if kind == "char":
            vocab, count = _char_pass1(files, p1)
            if count == 0:
                raise DataError(f"{source} has no text")
            tokenizer = CharTokenizer([chr(c) for c in vocab])
        else:
            tmp_file = stack.enter_context(tempfile.NamedTemporaryFile(dir=out_dir, prefix=tmp_prefix("gpt2-ids"),
                                                                     suffix=TMP_MARK))
            vocab, count = _gpt2_pass1(files, tmp_file, p1)
            tmp_file.flush()
            if count == 0:
                raise DataError(f"{source} has no text")
            tokenizer = BPETokenizer([int(i) for i in vocab])
        p1.close()
        dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
        n_train = int(TRAIN_FRACTION * count)  # as split_ids does with the same ids

        # 2. Write the split, to temporary files renamed only once both are complete.
        train_f = stack.enter_context(atomic_file(out_dir / "train.bin"))
        val_f = stack.enter_context(atomic_file(out_dir / "val.bin"))
        writer = SplitWriter(n_train, train_f, val_f, dtype)
        if kind == "char":
            p2 = Progress("prepare 2/2 (write)", total_bytes, quiet)
            written = _char_pass2(files, vocab, writer, p2)
        else:
            p2 = Progress("prepare 2/2 (write)", 2 * count, quiet)
            written = _gpt2_pass2(Path(tmp_file.name), vocab, writer, p2)
        p2.close()
        if written != count:
            raise DataError(f"the text changed while it was being prepared ({count} then {written} tokens); "
                            f"run prepare again")
        # A meta.json marks a complete folder: drop the old one before the .bin files change.
        (out_dir / META).unlink(missing_ok=True)
    base = Path(source).expanduser()
    meta = {
        "format": FORMAT,
        "format_version": 1,
        "tokenizer": tokenizer.to_dict(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "train_tokens": n_train,
        "val_tokens": count - n_train,
        "train_fraction": TRAIN_FRACTION,
        "sources": [p.name if base.is_file() else p.relative_to(base).as_posix() for p in files],
        "separator": SEPARATORS[kind],
        "source_bytes": total_bytes,
        "minigpt_version": __version__,
    }
    lines = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items())  # a key a line
    atomic_write(out_dir / META, ("{\n" + lines + "\n}\n").encode())
    return meta


# ---- reading prepared data ----------------------------------------------------------------------

def is_prepared(path) -> bool:
    """True for a folder written by `prepare` (it has a meta.json)."""
    return isinstance(path, (str, os.PathLike)) and (Path(path).expanduser() / META).is_file()


def _memmap(path: Path, dtype, tokens: int) -> np.ndarray:
    size = path.stat().st_size if path.is_file() else -1
    if size != tokens * np.dtype(dtype).itemsize:
        raise DataError(f"{path} does not match its meta.json ({size} bytes, expected "
                        f"{tokens * np.dtype(dtype).itemsize}); run prepare again")
    return np.memmap(path, dtype=dtype, mode="r") if tokens else np.zeros(0, dtype=dtype)


def load_prepared(path):
    """(tokenizer, Splits of read-only memmaps, meta) of a prepared folder; DataError if it is broken."""
    path = Path(path).expanduser()
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path / META}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path / META} was not written by `python -m minigpt prepare`")
    try:
        tokenizer = tokenizer_from_dict(meta.get("tokenizer"))
        dtype = {"uint16": np.uint16, "uint32": np.uint32}[meta.get("dtype")]
        n_train, n_val = int(meta["train_tokens"]), int(meta["val_tokens"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path / META} is malformed ({e})") from None
    splits = Splits(train=_memmap(path / "train.bin", dtype, n_train), val=_memmap(path / "val.bin", dtype, n_val))
    return tokenizer, splits, meta


# ---- the `prepare` subcommand -------------------------------------------------------------------

def register(sub):
    p = sub.add_parser("prepare", help="encode a big text once into train.bin / val.bin for `train --data DIR`",
                       description="Encode a UTF-8 text file, or a folder of .txt files, into token files that "
                                   "training reads by memory map. Example: python -m minigpt prepare "
                                   "--data corpus/ --tokenizer char --out data/corpus")
    p.add_argument("--data", required=True, help="a UTF-8 text file or a folder of .txt files (sorted, recursive)")
    p.add_argument("--tokenizer", default="char", choices=list(SEPARATORS),
                   help="char or GPT-2 BPE (a compact vocabulary of the ids used); default char")
    p.add_argument("--out", required=True, help="folder to write train.bin, val.bin and meta.json into")
    p.add_argument("--quiet", action="store_true", help="no progress meter")
    p.set_defaults(func=run)


def run(args) -> int:
    t0 = time.perf_counter()
    meta = prepare(args.data, args.tokenizer, args.out, quiet=args.quiet)
    n = meta["train_tokens"] + meta["val_tokens"]
    print(f"prepared {len(meta['sources'])} file(s), {meta['source_bytes'] / 1e6:,.1f} MB: {n:,} tokens "
          f"({meta['train_tokens']:,} train / {meta['val_tokens']:,} val), {meta['tokenizer']['type']} vocabulary "
          f"of {meta['vocab_size']:,} ({meta['dtype']}) in {time.perf_counter() - t0:.1f} s -> {args.out}")
    print(json.dumps({"out": str(args.out), "tokens": n, "train_tokens": meta["train_tokens"],
                      "val_tokens": meta["val_tokens"], "vocab_size": meta["vocab_size"], "dtype": meta["dtype"]}))
    return 0
