"""Reading the weight files users bring (checkpoints, VAEs, embeddings) without ever running code from them.

Only .safetensors is read: its header is JSON (names, dtypes, shapes) followed by raw tensor bytes, so a
file can be inspected (family detection, dimension checks) before anything is loaded, and loading it cannot
execute anything. Pickle-based files (.ckpt, .pt, .pth, .bin) are refused by name and never opened:
unpickling runs whatever code the file's author put in it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..pickle_files import PICKLE_SUFFIXES, refuse_pickle  # noqa: F401  (re-exported)

_MAX_HEADER = 256 * 1024 * 1024  # a safetensors header is JSON; SDXL's is ~200 KiB


def read_shapes(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """name -> shape from the safetensors header alone (no tensor data read)."""
    refuse_pickle(path, what)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: pass a .safetensors file")
    not_safetensors = (f"{what} {path.name} is not a .safetensors file (unreadable header): pass a Stable Diffusion "
                       ".safetensors file")
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise UserError(not_safetensors)
            (size,) = struct.unpack("<Q", raw)
            if size <= 0 or size > min(_MAX_HEADER, path.stat().st_size - 8):
                raise UserError(not_safetensors)
            header = json.loads(f.read(size).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(not_safetensors) from None
    if not isinstance(header, dict):
        raise UserError(not_safetensors)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise UserError(not_safetensors)
        shapes[name] = tuple(int(d) for d in entry["shape"])
    if not shapes:
        raise UserError(f"{what} {path.name} holds no tensors: pass a Stable Diffusion .safetensors file")
    return shapes


def load_tensors(path: Path, what: str, names: list[str] | None = None) -> dict[str, Any]:
    """The tensors of a safetensors file (all, or `names`), as CPU torch tensors in their stored dtype."""
    from safetensors import SafetensorError, safe_open

    read_shapes(path, what)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys()) if names is None else names
            return {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError) as exc:
        raise UserError(f"cannot read {what} {path.name} ({str(exc).splitlines()[0][:120]}): the file is damaged "
                        "or truncated, copy it again") from None
