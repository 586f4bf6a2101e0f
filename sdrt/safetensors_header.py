"""The one reader of safetensors headers, for every weight file users bring (checkpoints, VAEs, embeddings,
LoRAs): torch-free, so the runtime's LoRA path uses it too.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets;
optional `__metadata__` of strings) and raw tensor bytes. The header is the only part a hostile file can make
expensive or strange, so everything about it is checked here, once: its size, its JSON nesting depth, and
each entry's types and byte range (shape ["a"], [null], [1e400], offsets past the end, a byte count that
does not match the shape). Everything after reads trusted numbers.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .json_limits import JsonTooDeep, loads_bounded
from .manifest_schema import show_value
from .pickle_files import refuse_pickle
from .user_files import require_regular_file

MAX_HEADER_BYTES = 100_000_000  # the safetensors package's own limit; SDXL's header is ~200 KiB
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte range within the data section (after the header)
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int  # file offset of the data section
    data_size: int


class _Bad(Exception):
    """Why a header is unreadable, for the one UserError line."""


def read_header(path: Path, what: str, fix: str) -> SafetensorsHeader:
    """The checked header of a .safetensors file; a one-line UserError naming the problem otherwise."""
    path = Path(path)
    refuse_pickle(path, what)
    require_regular_file(path, what, "pass a .safetensors file")
    try:
        with path.open("rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            raw = f.read(8)
            if len(raw) != 8:
                raise _Bad("damaged or truncated")
            (size,) = struct.unpack("<Q", raw)
            if size <= 0 or size > min(MAX_HEADER_BYTES, file_size - 8):
                raise _Bad("damaged or truncated")
            text = f.read(size)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path} ({exc.strerror}): {fix}") from None
    except _Bad as exc:
        raise UserError(f"{what} {path.name} is not a readable .safetensors file ({exc}): {fix}") from None
    try:
        return _parse(text, 8 + size, file_size - 8 - size)
    except _Bad as exc:
        raise UserError(f"{what} {path.name} is not a readable .safetensors file ({exc}): {fix}") from None


def _parse(text: bytes, data_start: int, data_size: int) -> SafetensorsHeader:
    try:
        header = loads_bounded(text.decode("utf-8"))
    except JsonTooDeep as exc:
        raise _Bad(f"its header is {exc}") from None
    except (UnicodeDecodeError, ValueError):
        raise _Bad("damaged or truncated") from None
    if not isinstance(header, dict):
        raise _Bad("damaged or truncated")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _Bad("its __metadata__ is not a map of strings")
    tensors = {name: _entry(name, entry, data_size) for name, entry in header.items()}
    return SafetensorsHeader(tensors, metadata, data_start, data_size)


def _entry(name: str, entry: object, data_size: int) -> TensorEntry:
    if not isinstance(entry, dict):
        raise _Bad(f"tensor {name[:80]} has no dtype, shape and offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
        raise _Bad(f"tensor {name[:80]} has dtype {_show(dtype)}, shape {_show(shape)}, offsets {_show(offsets)}")
    start, end = offsets
    if not start <= end <= data_size:
        raise _Bad("damaged or truncated")
    if dtype in DTYPE_BYTES and math.prod(shape) * DTYPE_BYTES[dtype] != end - start:
        raise _Bad(f"tensor {name[:80]} of shape {shape} does not fill its {end - start} bytes (damaged)")
    return TensorEntry(dtype, tuple(shape), start, end)


def _ints(value: object) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _show(value: object) -> str:
    """As written in the file (null, not None); long values cut short."""
    return (json.dumps(value) if isinstance(value, str) else show_value(value))[:60]
