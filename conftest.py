"""Repository-wide pytest policy: tests marked `gpu` run only where an NVIDIA GPU and TensorRT are usable.

They are skipped here with the reason shown in the summary (`-ra`); a skipped test never counts as passed.
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest


def _gpu_available() -> tuple[bool, str]:
    if shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU on this machine (nvidia-smi not found)"
    if importlib.util.find_spec("tensorrt") is None:
        return False, "TensorRT is not installed (pip install 'sdrt[gpu]')"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    available, reason = _gpu_available()
    if available:
        return
    skip = pytest.mark.skip(reason=f"gpu test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
