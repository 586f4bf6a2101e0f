"""The GPU scripts start and refuse clearly on a machine without a GPU (their GPU parts run elsewhere)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["gpu_acceptance.py", "cuda_rt_check.py"])
def test_help_works(script: str) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("usage: ")


@pytest.mark.parametrize("script", ["gpu_acceptance.py", "cuda_rt_check.py"])
def test_refuses_without_a_gpu_in_one_line(script: str, tmp_path) -> None:
    # the scripts ask sdrt.backends.gpu_detect.nvidia_gpu_present; pretend the driver sees no GPU
    shim = tmp_path / "sitecustomize.py"
    shim.write_text("import sdrt.backends.gpu_detect as g\ng.nvidia_gpu_present = lambda: False\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--no-install"] if script == "gpu_acceptance.py"
                       else [sys.executable, str(ROOT / "bench" / script)], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error: no NVIDIA GPU found")
