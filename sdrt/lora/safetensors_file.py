"""A safetensors reader in numpy alone: the runtime install has no `safetensors` package and no torch.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets;
optional `__metadata__` of strings) and raw little-endian tensor bytes. Nothing in it can execute code.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..pickle_files import refuse_pickle

_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
_MAX_HEADER = 256 * 1024 * 1024


def read_safetensors(path: Path, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> float32 array, metadata); one-line UserError for a pickle, a missing or a damaged file."""
    refuse_pickle(path, what)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: pass a .safetensors file")
    damaged = f"{what} {path.name} is not a readable .safetensors file (damaged or truncated): copy it again"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        (size,) = struct.unpack("<Q", data[:8])
        if size <= 0 or size > min(_MAX_HEADER, len(data) - 8):
            raise ValueError
        header = json.loads(data[8:8 + size].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError
        metadata = header.pop("__metadata__", None) or {}
        body = memoryview(data)[8 + size:]
        tensors = {name: _tensor(entry, body, what, path) for name, entry in header.items()}
    except (struct.error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise UserError(damaged) from None
    if not tensors:
        raise UserError(f"{what} {path.name} holds no tensors: pass a LoRA .safetensors file")
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _tensor(entry: dict, body: memoryview, what: str, path: Path) -> np.ndarray:
    dtype, shape = entry["dtype"], [int(d) for d in entry["shape"]]
    start, end = (int(o) for o in entry["data_offsets"])
    if not 0 <= start <= end <= len(body):
        raise ValueError
    raw = body[start:end]
    if dtype == "BF16":
        array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    elif dtype in _DTYPES:
        array = np.frombuffer(raw, dtype=_DTYPES[dtype])
    else:
        raise UserError(f"{what} {path.name} stores {dtype} tensors: sdrt reads float32, float16 and bfloat16 "
                        "LoRA files")
    if array.size != int(np.prod(shape)):
        raise ValueError
    return array.reshape(shape).astype(np.float32)
