"""Detect what this machine offers for `--backend auto`: an NVIDIA GPU, TensorRT, cuda-python, engines
built for this GPU, ONNX Runtime's providers. Every probe is guarded, so on a CPU-only machine this
returns facts that say why each GPU path is unavailable instead of raising; backend_choice.py decides.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..manifest import Manifest
from ..engines.target import GpuTarget
from .backend_choice import CPU_EP, CUDA_EP, TRT_EP, GpuFacts


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def _gpu() -> tuple[str | None, str, tuple[str, int, int] | None]:
    """(description, reason if none, (name, major, minor))."""
    if not _has("cuda.bindings"):
        return None, "cuda-python is not installed, so no GPU can be used (pip install 'sdrt[gpu]')", None
    from . import cuda_rt  # noqa: PLC0415

    try:
        if cuda_rt.device_count() < 1:
            return None, "no NVIDIA GPU found (cudaGetDeviceCount is 0)", None
        cuda_rt.check_driver()
        name, major, minor = cuda_rt.device_properties(0)
    except (cuda_rt.CudaError, UserError) as exc:
        return None, f"no usable NVIDIA GPU ({exc})", None
    return f"{name} (sm{major}{minor})", "", (name, major, minor)


def detect_facts(
    manifest: Manifest | None = None,
    engines_dir: str | Path | None = None,
    components: Sequence[str] = (),
    precision: str = "fp16",
    probe_trt_ep: bool = False,
) -> GpuFacts:
    """probe_trt_ep: also check that ONNX Runtime's TensorRT provider can load its TensorRT 10 libraries
    (only for `--backend ort-trt`: the check loads them into the process, and auto never picks that EP)."""
    gpu, gpu_reason, props = _gpu()
    failed: dict[str, str] = {}
    try:
        import onnxruntime as ort  # noqa: PLC0415

        providers = tuple(ort.get_available_providers())
        if gpu is not None and CUDA_EP in providers:
            from .provider_probe import provider_failure  # noqa: PLC0415

            why = provider_failure(ort, CUDA_EP)
            if why:
                failed[CUDA_EP] = why
        if probe_trt_ep and gpu is not None and TRT_EP in providers:
            from .provider_probe import trt_ep_missing  # noqa: PLC0415

            why = trt_ep_missing()
            if why:
                failed[TRT_EP] = why
    except ImportError:
        providers = (CPU_EP,)
    tensorrt = None
    if _has("tensorrt"):
        try:
            import tensorrt as trt  # noqa: PLC0415

            tensorrt = str(trt.__version__)
        except Exception:  # noqa: BLE001  (a broken TensorRT install counts as none)
            tensorrt = None
    engines, engines_reason = None, "no TensorRT engines built for this GPU"
    if props and tensorrt and manifest is not None and engines_dir is not None and components:
        from ..engines.store import find_pipeline_engines  # noqa: PLC0415

        target = GpuTarget(tensorrt, f"{props[1]}.{props[2]}", props[0])
        try:
            _, missing = find_pipeline_engines(engines_dir, manifest, components, precision, target)
        except UserError as exc:  # an engine here was built for another target
            missing = str(exc)
        if missing:
            engines_reason = missing
        else:
            engines = str(engines_dir)
    return GpuFacts(
        gpu=gpu, gpu_reason=gpu_reason or "", tensorrt=tensorrt, cuda_python=_has("cuda.bindings"),
        engines=engines, engines_reason=engines_reason, ort_providers=providers, ort_failed=failed,
    )


NO_GPU = ("no NVIDIA GPU found: TensorRT engines are built on the GPU that will run them, so run sdrt build "
          "there (sdrt build --dry-run shows the profiles without one)")


def nvidia_gpu_present() -> bool:
    """Whether the NVIDIA kernel driver sees a GPU, asked without any CUDA library (so a machine without a
    GPU is told that first, not that TensorRT is missing)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        if gpus.is_dir() and any(gpus.iterdir()):
            return True
    except OSError:
        pass
    return any(Path("/dev").glob("nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


def detect_target(device: int = 0) -> GpuTarget:
    """This machine's target for GPU `device`, or UserError saying what is missing, in the order a user
    fixes it: a GPU, TensorRT, cuda-python. Imports tensorrt and cuda-bindings lazily. Not run on a GPU yet."""
    from ..engines.builder import import_tensorrt  # noqa: PLC0415
    from . import cuda_rt  # noqa: PLC0415

    if not nvidia_gpu_present():
        raise UserError(NO_GPU)
    trt = import_tensorrt()
    try:
        if cuda_rt.device_count() <= device:
            raise UserError(f"no NVIDIA GPU {device} on this machine: TensorRT engines are built on the GPU that runs them")
        cuda_rt.check_driver()
        name, major, minor = cuda_rt.device_properties(device)
    except cuda_rt.CudaError as exc:
        raise UserError(f"no usable NVIDIA GPU ({exc}): TensorRT engines are built on the GPU that runs them") from None
    return GpuTarget(tensorrt_version=str(trt.__version__), compute_capability=f"{major}.{minor}", device_name=name)
