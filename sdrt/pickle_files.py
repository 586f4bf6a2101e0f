"""Pickle-based weight files (.ckpt, .pt, .pth, .bin) are refused by name and never opened: unpickling runs
whatever code the file's author put in it. Shared by the export stage and the torch-free LoRA reader."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def refuse_pickle(path: Path, what: str) -> None:
    """One-line refusal for pickle files, before any byte of them is read."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(
            f"{what} {path.name} is a pickle file ({path.suffix}), which sdrt never opens because unpickling can "
            "run arbitrary code: convert it to .safetensors with a tool you trust (e.g. the safetensors "
            "converter of your UI) and pass that file")
