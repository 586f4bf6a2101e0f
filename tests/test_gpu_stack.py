"""One consistent GPU stack (issue 25 defects 2, 13, 14): what the extras admit, the driver check at start-up,
and `--backend ort-trt` refused in one line when ONNX Runtime's TensorRT provider cannot load its TensorRT 10
libraries (the [gpu] extra installs TensorRT 11). The library probe runs for real here (this machine has no
TensorRT); the GPU side is NOT RUN ON A GPU."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement

from sdrt.backends import cuda_rt, gpu_detect, provider_probe
from sdrt.backends.backend_choice import CPU_EP, CUDA_EP, TRT_EP, choose_backend
from sdrt.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
EP_MISSING = ("onnxruntime-gpu's TensorrtExecutionProvider needs libnvinfer.so.10 (TensorRT 10), which is not "
              "installed (the [gpu] extra brings TensorRT 11): pip install 'sdrt[ort-trt]' --extra-index-url "
              "https://pypi.nvidia.com instead of [gpu], or use --backend trt")


def _extra(name: str) -> dict[str, Requirement]:
    reqs = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]
    return {Requirement(r).name: Requirement(r) for r in reqs}


def test_gpu_extra_admits_tensorrt_10_1_to_11_except_11_3_and_cuda_python_with_bindings() -> None:
    gpu = _extra("gpu")
    trt, cuda = gpu["tensorrt"].specifier, gpu["cuda-python"].specifier
    assert [v for v in ("10.0.1", "10.1.0", "11.3.0", "11.3.2.7", "11.4.0.106", "12.0.0") if trt.contains(v)] == [
        "10.1.0", "11.4.0.106"]  # 11.3.x: REFIT can drop a GEMM bias; 12: unknown API
    assert [v for v in ("12.6.0", "12.6.1", "12.6.2", "13.4.4") if cuda.contains(v)] == ["12.6.2", "13.4.4"]


def test_ort_trt_extra_is_the_tensorrt_10_stack_its_provider_links() -> None:
    ort_trt = _extra("ort-trt")
    assert "onnxruntime-gpu" in ort_trt and {"cuda", "cudnn"} <= ort_trt["onnxruntime-gpu"].extras
    trt = next(r for n, r in ort_trt.items() if n.startswith("tensorrt"))
    assert trt.specifier.contains("10.13.3") and not trt.specifier.contains("11.4.0")
    assert "tensorrt" not in ort_trt  # the metapackage would pull TensorRT 11


def test_trt_ep_probe_names_the_missing_library_on_this_machine() -> None:
    assert provider_probe.trt_ep_missing() == EP_MISSING


def test_trt_ep_probe_finds_the_libraries_in_the_wheel_folder(tmp_path) -> None:
    for name in provider_probe.TRT_EP_LIBRARIES:
        (tmp_path / name).write_bytes(b"")
    loaded = []

    def load(path: str) -> None:
        if "/" not in path:
            raise OSError(f"{path}: cannot open shared object file")
        loaded.append(Path(path).name)

    assert provider_probe.trt_ep_missing(load, lambda: [tmp_path]) is None
    assert loaded == list(provider_probe.TRT_EP_LIBRARIES)


def test_ort_trt_is_refused_in_one_line_when_its_tensorrt_10_is_missing(monkeypatch, tmp_path) -> None:
    """Before: ORT listed the provider, the session silently dropped it, and the user got a line blaming
    CUDA/cuDNN (or, with fallback, a CPU run). Now detection says which library and which extra."""
    import onnxruntime

    monkeypatch.setattr(gpu_detect, "_gpu", lambda: ("NVIDIA H100 (sm90)", "", ("NVIDIA H100", 9, 0)))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TRT_EP, CUDA_EP, CPU_EP])
    monkeypatch.setattr(provider_probe, "provider_failure", lambda ort, provider: None)
    facts = gpu_detect.detect_facts(probe_trt_ep=True)  # what resolve_backend asks for --backend ort-trt
    with pytest.raises(UserError) as err:
        choose_backend("ort-trt", facts)
    assert str(err.value) == f"backend ort-trt unavailable: {EP_MISSING}"
    assert choose_backend("ort-cuda", facts).name == "ort-cuda"  # the CUDA provider is unaffected


class _Driver:
    cudaError_t = SimpleNamespace(cudaSuccess=0)

    def __init__(self, driver: int, runtime: int) -> None:
        self.driver, self.runtime = driver, runtime

    def cudaDriverGetVersion(self) -> tuple[int, int]:
        return 0, self.driver

    def cudaRuntimeGetVersion(self) -> tuple[int, int]:
        return 0, self.runtime


@pytest.mark.parametrize("driver, runtime, message", [
    (12080, 13000, "the NVIDIA driver supports CUDA 12.8 but the installed CUDA runtime is 13.0 (CUDA 13 needs "
                   "NVIDIA driver 580.65.06 or newer): update the driver (nvidia-smi shows its version)"),
    (12020, 12060, None),  # CUDA 12 minor-version compatibility: a 12.x driver runs any 12.y runtime
    (13010, 13000, None),
])
def test_driver_older_than_the_cuda_runtime_is_one_line_at_start_up(monkeypatch, driver, runtime, message) -> None:
    monkeypatch.setattr(cuda_rt, "cudart", lambda: _Driver(driver, runtime))
    if message is None:
        cuda_rt.check_driver()
        return
    with pytest.raises(UserError) as err:
        cuda_rt.check_driver()
    assert str(err.value) == message


def test_gpu_detection_reports_an_old_driver_as_the_reason(monkeypatch) -> None:
    rt = _Driver(12080, 13000)
    rt.cudaGetDeviceCount = lambda: (0, 1)
    monkeypatch.setattr(cuda_rt, "cudart", lambda: rt)
    monkeypatch.setattr(gpu_detect, "_has", lambda module: True)
    gpu, reason, _ = gpu_detect._gpu()
    assert gpu is None and reason.startswith("no usable NVIDIA GPU (the NVIDIA driver supports CUDA 12.8 but")
    assert re.search(r"580\.65\.06", reason)


def test_only_an_ort_trt_request_probes_the_tensorrt_10_libraries(monkeypatch, tmp_path) -> None:
    """The probe loads libraries into the process: `auto` and `trt` (TensorRT 11 in the same process) never
    trigger it."""
    from fake_bundles import make_manifest
    from sdrt.backends.gpu_engines import resolve_backend

    probed = []
    monkeypatch.setattr(gpu_detect, "detect_facts",
                        lambda *a, probe_trt_ep=False, **k: probed.append(probe_trt_ep) or gpu_detect.GpuFacts())
    manifest = make_manifest("sd1")
    for backend in ("auto", "ort-cuda", "ort-trt"):
        try:
            resolve_backend(backend, manifest, ["unet"], tmp_path)
        except UserError:
            pass  # no GPU in these facts
    assert probed == [False, False, True]


def test_an_ort_trt_session_that_dropped_its_provider_names_the_library(monkeypatch) -> None:
    """OrtEngine opened directly (library users, bench steps): ORT silently dropped the TensorRT provider;
    the error names libnvinfer.so.10 rather than blaming CUDA/cuDNN."""
    import onnxruntime

    from sdrt.backends.ort_options import check_providers

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TRT_EP, CUDA_EP, CPU_EP])
    with pytest.raises(UserError) as err:
        check_providers((TRT_EP, CUDA_EP, CPU_EP), [CUDA_EP, CPU_EP], "ort-trt")
    assert str(err.value) == f"backend ort-trt asked for {TRT_EP} but {EP_MISSING}"
