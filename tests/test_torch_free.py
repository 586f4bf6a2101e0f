"""The runtime side must never import torch, diffusers or transformers: checked in a fresh interpreter."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "scipy")


@pytest.mark.parametrize("module", ["sdrt.schedulers", "sdrt.runtime", "sdrt.manifest", "sdrt.cli"])
def test_module_imports_no_heavy_dependency(module: str) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} pulled in: {out}"
