"""The runtime side must never import torch, diffusers or transformers: checked in a fresh interpreter."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "diffusers", "transformers", "scipy")
ROOT = Path(__file__).resolve().parent.parent


def _package_modules(package: str) -> list[str]:
    """Every module of a package, found on disk, so a module added or moved later is covered too."""
    path = ROOT / package.replace(".", "/")
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)])]


RUNTIME_MODULES = sorted({
    *_package_modules("sdrt.backends"), *_package_modules("sdrt.runtime"), *_package_modules("sdrt.engines"),
    *_package_modules("sdrt.serving"), *_package_modules("sdrt.tools"), "sdrt.schedulers", "sdrt.bench",
    "sdrt.manifest", "sdrt.cli",
})


def test_every_moved_backend_module_is_covered() -> None:
    moved = ("engine", "ort_engine", "ort_options", "trt_engine", "cuda_rt", "graph_cache", "gpu_detect",
             "gpu_memory", "backend_choice", "gpu_engines")
    assert {f"sdrt.backends.{m}" for m in moved} <= set(RUNTIME_MODULES)


@pytest.mark.parametrize("module", RUNTIME_MODULES)
def test_module_imports_no_heavy_dependency(module: str) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.strip()
    assert out == "", f"importing {module} pulled in: {out}"
