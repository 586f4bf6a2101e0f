"""The per-user cache folder: what sdrt may recompute at any time (the built-in model, OpenVINO's compiled
models, the CPU backend decision). Never inside a user's bundle: bundles may be read-only or shared."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "SDRT_CACHE_DIR"


def cache_root() -> Path:
    """$SDRT_CACHE_DIR, else $XDG_CACHE_HOME/sdrt, else ~/.cache/sdrt."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdrt"
