"""Reading the weight files users bring (checkpoints, VAEs, embeddings) without ever running code from them.

Only .safetensors is read: its header is JSON (names, dtypes, shapes) followed by raw tensor bytes, so a
file can be inspected (family detection, dimension checks) before anything is loaded, and loading it cannot
execute anything. Pickle-based files (.ckpt, .pt, .pth, .bin) are refused by name and never opened:
unpickling runs whatever code the file's author put in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from ..pickle_files import PICKLE_SUFFIXES, refuse_pickle  # noqa: F401  (re-exported)
from ..safetensors_header import read_header


def read_shapes(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """name -> shape from the safetensors header alone (no tensor data read), checked by the one header reader."""
    header = read_header(path, what, "pass a Stable Diffusion .safetensors file")
    if not header.tensors:
        raise UserError(f"{what} {path.name} holds no tensors: pass a Stable Diffusion .safetensors file")
    return {name: entry.shape for name, entry in header.tensors.items()}


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
