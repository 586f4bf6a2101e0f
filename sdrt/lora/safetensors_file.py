"""A safetensors reader in numpy alone: the runtime install has no `safetensors` package and no torch.

The header is read and checked by sdrt.safetensors_header (the one reader for every weight file); this turns
its byte ranges into float32 arrays. Nothing in the format can execute code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..safetensors_header import TensorEntry, read_header

_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
_FIX = "copy it again"


def read_safetensors(path: Path, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> float32 array, metadata); one-line UserError for a pickle, a missing or a damaged file."""
    path = Path(path)
    header = read_header(path, what, _FIX)
    try:
        with path.open("rb") as f:
            f.seek(header.data_start)
            body = memoryview(f.read(header.data_size))
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(body) != header.data_size:
        raise UserError(f"{what} {path.name} is not a readable .safetensors file (damaged or truncated): {_FIX}")
    tensors = {name: _tensor(entry, body, what, path) for name, entry in header.tensors.items()}
    if not tensors:
        raise UserError(f"{what} {path.name} holds no tensors: pass a LoRA .safetensors file")
    return tensors, header.metadata


def _tensor(entry: TensorEntry, body: memoryview, what: str, path: Path) -> np.ndarray:
    raw = body[entry.start:entry.end]
    if entry.dtype == "BF16":
        array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    elif entry.dtype in _DTYPES:
        array = np.frombuffer(raw, dtype=_DTYPES[entry.dtype])
    else:
        raise UserError(f"{what} {path.name} stores {entry.dtype[:20]} tensors: sdrt reads float32, float16 and "
                        "bfloat16 LoRA files")
    return array.reshape(entry.shape).astype(np.float32)
