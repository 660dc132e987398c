"""Checkpoints: safetensors files that carry their own config, tokenizer and run card.

Loading checks the whole file before any model is built: the safetensors header (read and
checked by hand, so a hostile header cannot ask for huge allocations), the metadata, the config
against the limits, and exactly the expected tensor names, shapes and dtypes. Never unpickles.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from . import __version__
from .data import atomic_write
from .limits import Limits
from .model import GPTConfig, build_model
from .tokenizers import tokenizer_from_dict

FORMAT = "minigpt"
FORMAT_VERSION = "1"
TIED = "lm_head.weight"  # the same tensor as transformer.wte.weight: stored once, re-tied on load
MAX_HEADER_BYTES = 16 * 1024 * 1024
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class CheckpointError(ValueError):
    """A file that is not a usable minigpt checkpoint; the message says what is wrong."""


@dataclass
class Checkpoint:
    model: torch.nn.Module
    tokenizer: object
    config: GPTConfig
    training: dict = field(default_factory=dict)  # the run card: seed, iterations, val loss, ...
    optimizer_state: dict | None = None           # torch optimizer state_dict, when saved
    path: str | None = None


def _optimizer_tensors(state_dict: dict) -> tuple[dict, list]:
    tensors = {}
    for idx, st in state_dict["state"].items():
        for key, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(float(value))
            tensors[f"optimizer.{idx}.{key}"] = t.detach().float().cpu().contiguous().reshape(t.shape)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, groups


def checkpoint_bytes(model, tokenizer, training: dict | None = None, optimizer=None) -> bytes:
    """The safetensors bytes of a checkpoint (weights fp32, metadata as JSON strings)."""
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items() if k != TIED}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
        "tokenizer": json.dumps(tokenizer.to_dict()),
        "training": json.dumps(training or {}),
        "minigpt_version": __version__,
        "torch_version": torch.__version__,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if optimizer is not None:
        opt_tensors, groups = _optimizer_tensors(optimizer.state_dict())
        tensors.update(opt_tensors)
        metadata["optimizer"] = json.dumps({"type": type(optimizer).__name__, "param_groups": groups})
    return save(tensors, metadata=metadata)


def save_checkpoint(path, model, tokenizer, training: dict | None = None, optimizer=None) -> Path:
    """Write atomically: a crash at any moment leaves the old file or the new one, never a mix."""
    path = Path(path)
    atomic_write(path, checkpoint_bytes(model, tokenizer, training, optimizer))
    return path


def read_header(path) -> tuple[dict, dict]:
    """(tensor entries, metadata) of a safetensors file, checked against the file's real size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name} is not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path.name} is not a safetensors file (its first bytes do not "
                                      f"describe a header; a pickle or other format renamed?)")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path.name} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has a malformed safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f"{path.name} has malformed metadata (must map strings to strings)")
    data_len = size - 8 - n
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"tensor {name!r} has a malformed header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"tensor {name!r} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CheckpointError(f"tensor {name!r} has a malformed shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len):
            raise CheckpointError(f"tensor {name!r} points outside the file (truncated or damaged file?)")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise CheckpointError(f"tensor {name!r} has {offsets[1] - offsets[0]} bytes for shape {shape}")
    return header, metadata


def _json_field(metadata: dict, key: str, required: bool = True):
    if key not in metadata:
        if required:
            raise CheckpointError(f"metadata field {key!r} is missing (not a minigpt checkpoint?)")
        return None
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError:
        raise CheckpointError(f"metadata field {key!r} is not valid JSON") from None


def expected_shapes(config: GPTConfig) -> dict[str, list[int]]:
    """Tensor name → shape of the model `config` describes, computed on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(config)
    return {k: list(v.shape) for k, v in model.state_dict().items() if k != TIED}


def _check_optimizer(header: dict, metadata: dict, config: GPTConfig) -> bool:
    """True if a complete optimizer state that fits the model is present; False if there is none;
    CheckpointError if there is one and it is incomplete, of an unknown optimizer or misfit."""
    from .optim import state_layout
    names = [k for k in header if k.startswith("optimizer.")]
    if not names:
        return False
    meta = _json_field(metadata, "optimizer", required=False)
    if not isinstance(meta, dict) or not isinstance(meta.get("type", "AdamW"), str):
        raise CheckpointError("the checkpoint has optimizer tensors but no valid 'optimizer' metadata")
    with torch.device("meta"):
        model = build_model(config)
    try:
        layout = state_layout(model, meta.get("type", "AdamW"))
    except ValueError as e:
        raise CheckpointError(f"the optimizer state is not usable: {e}") from None
    for name in names:
        parts = name.split(".")
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(layout) \
                or parts[2] not in layout[int(parts[1])][1]:
            raise CheckpointError(f"unexpected tensor {name!r} in the optimizer state")
        shape, _ = layout[int(parts[1])]
        want = [] if parts[2] == "step" else shape
        if header[name]["shape"] != want or header[name]["dtype"] != "F32":
            raise CheckpointError(f"optimizer tensor {name!r} does not fit the model")
    missing = [f"optimizer.{i}.{key}" for i, (_, keys) in enumerate(layout) for key in keys
               if f"optimizer.{i}.{key}" not in header]
    if missing:
        raise CheckpointError(f"the optimizer state is incomplete ({len(missing)} tensors missing, e.g. "
                              f"{missing[0]!r}): a damaged file? Save with --weights-only to leave it out")
    return True


def inspect_checkpoint(path, limits: Limits | None = None) -> tuple[GPTConfig, object, dict, dict, dict]:
    """Validate everything but the tensor data; return (config, tokenizer, training, header, metadata)."""
    limits = limits or Limits.from_env()
    header, metadata = read_header(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError("this safetensors file is not a minigpt checkpoint (metadata 'format' is "
                              f"{metadata.get('format')!r}, expected {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {metadata.get('format_version')!r} is not supported "
                              f"(this minigpt reads version {FORMAT_VERSION})")
    try:
        config = GPTConfig.from_dict(_json_field(metadata, "config")).validate(limits)
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"the checkpoint's model config is not usable: {e}") from None
    try:
        tokenizer = tokenizer_from_dict(_json_field(metadata, "tokenizer"))
    except CheckpointError:
        raise
    except (ValueError, OSError) as e:
        raise CheckpointError(f"the checkpoint's tokenizer is not usable: {e}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model expects "
                              f"{config.vocab_size}: the file's vocabulary does not match its model")
    training = _json_field(metadata, "training", required=False) or {}
    if not isinstance(training, dict):
        raise CheckpointError("metadata field 'training' must be a JSON object")
    want = expected_shapes(config)
    have = {k: v for k, v in header.items() if not k.startswith("optimizer.")}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        raise CheckpointError(f"the checkpoint lacks tensors: {', '.join(missing[:5])}")
    if extra:
        raise CheckpointError(f"the checkpoint has unexpected tensors: {', '.join(extra[:5])}")
    for name, shape in want.items():
        if have[name]["shape"] != shape:
            raise CheckpointError(f"tensor {name} has shape {have[name]['shape']}, the config needs {shape}")
        if have[name]["dtype"] != "F32":
            raise CheckpointError(f"tensor {name} has dtype {have[name]['dtype']}, expected F32")
    _check_optimizer(header, metadata, config)
    return config, tokenizer, training, header, metadata


def load_checkpoint(path, device: str = "cpu", limits: Limits | None = None) -> Checkpoint:
    """A validated checkpoint with its model built and weights loaded; CheckpointError otherwise."""
    config, tokenizer, training, header, metadata = inspect_checkpoint(path, limits)
    try:
        tensors = load_file(os.fspath(path))
    except Exception as e:  # safetensors raises its own error types for damaged data
        raise CheckpointError(f"could not read the tensors of {Path(path).name}: {e}") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    if not all(torch.isfinite(v).all() for v in weights.values()):
        raise CheckpointError("the checkpoint's weights contain NaN or infinity")
    model = build_model(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {TIED}:
        raise CheckpointError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
    optimizer_state = None
    opt_meta = _json_field(metadata, "optimizer", required=False)
    if opt_meta is not None and any(k.startswith("optimizer.") for k in tensors):
        state: dict[int, dict] = {}
        for name, t in tensors.items():
            if name.startswith("optimizer."):
                if not torch.isfinite(t).all():
                    raise CheckpointError(f"the optimizer state contains NaN or infinity ({name})")
                _, idx, key = name.split(".")
                state.setdefault(int(idx), {})[key] = t
        # Hyperparameters come from the run that resumes, never from the file: only the tensors count.
        optimizer_state = {"state": dict(sorted(state.items())), "type": opt_meta.get("type", "AdamW"),
                           "param_groups": opt_meta.get("param_groups", [])}
    return Checkpoint(model=model.to(device), tokenizer=tokenizer, config=config, training=training,
                      optimizer_state=optimizer_state, path=os.fspath(path))
