"""The runtime side must never import torch, diffusers or transformers: checked in a fresh interpreter."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "scipy")


RUNTIME_MODULES = [
    "sdrt.schedulers", "sdrt.runtime", "sdrt.runtime.pipeline", "sdrt.runtime.gpu_engines", "sdrt.runtime.ort_gpu",
    "sdrt.runtime.trt_engine", "sdrt.engines", "sdrt.bench", "sdrt.manifest", "sdrt.cli",
]


@pytest.mark.parametrize("module", RUNTIME_MODULES)
def test_module_imports_no_heavy_dependency(module: str) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} pulled in: {out}"
