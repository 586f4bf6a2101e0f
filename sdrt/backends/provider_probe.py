"""Does an ONNX Runtime GPU provider really start? onnxruntime-gpu lists CUDAExecutionProvider whenever
the wheel has it, even when the CUDA or cuDNN libraries it loads are missing; the session then silently
runs on CPU. So `--backend auto` opens a one-node session on the provider first (milliseconds) and only
chooses it when the session really uses it.

The probe graph is written as ONNX protobuf bytes by hand (Identity on a float[1]), because `onnx` is an
export-time dependency, not a runtime one.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path
from typing import Any, Callable


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor_info(name: str) -> bytes:
    dim = _field(1, _field(1, 1))  # TensorShapeProto.dim { dim_value: 1 }
    tensor = _field(1, 1) + _field(2, dim)  # elem_type FLOAT, shape
    return _field(1, name) + _field(2, _field(1, tensor))  # ValueInfoProto name, type.tensor_type


def probe_model() -> bytes:
    """ModelProto bytes: y = Identity(x), x and y float[1], opset 13, IR version 7."""
    node = _field(1, "x") + _field(2, "y") + _field(4, "Identity")
    graph = _field(1, node) + _field(2, "sdrt_probe") + _field(11, _tensor_info("x")) + _field(12, _tensor_info("y"))
    return _field(1, 7) + _field(7, graph) + _field(8, _field(2, 13))


def preload_cuda_libraries(ort: Any) -> None:
    """onnxruntime.preload_dlls() (onnxruntime-gpu >= 1.21) loads the CUDA and cuDNN libraries that the
    `onnxruntime-gpu[cuda,cudnn]` extras installed as nvidia-* wheels; older or CPU builds lack it."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception:  # noqa: BLE001  (a failed preload shows up as the provider failing to start)
        pass


def provider_failure(ort: Any, provider: str) -> str | None:
    """None when `provider` starts; otherwise why not, one phrase."""
    preload_cuda_libraries(ort)
    try:
        session = ort.InferenceSession(probe_model(), providers=[provider, "CPUExecutionProvider"])
        active = list(session.get_providers())
    except Exception as exc:  # noqa: BLE001  (ORT raises its own classes)
        text = str(exc).strip().splitlines()
        return f"{provider} failed to start ({text[0][:160] if text else type(exc).__name__})"
    if provider in active:
        return None
    return (f"{provider} is listed but failed to start (its CUDA/cuDNN libraries are missing: "
            "pip install 'sdrt[gpu]' brings them)")


# onnxruntime-gpu 1.31's TensorRT provider library is linked against TensorRT 10 (readelf of the PyPI wheel);
# the [gpu] extra installs TensorRT 11, whose libraries end in .so.11. Without these ORT drops the provider.
TRT_EP_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")
ORT_TRT_EXTRA = "pip install 'sdrt[ort-trt]' --extra-index-url https://pypi.nvidia.com"


def _wheel_library_dirs() -> list[Path]:
    """Where NVIDIA's TensorRT wheels put their shared libraries (tensorrt_libs), if installed."""
    dirs = []
    for package in ("tensorrt_libs", "tensorrt_cu13_libs", "tensorrt_cu12_libs"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(Path(location))
    return dirs


def trt_ep_missing(load: Callable[[str], Any] = lambda name: ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL),
                   dirs: Callable[[], list[Path]] = _wheel_library_dirs) -> str | None:
    """None when the libraries ONNX Runtime's TensorRT provider links are loadable (loaded globally here, so the
    provider finds them); otherwise one phrase naming the first one missing and the fix."""
    for name in TRT_EP_LIBRARIES:
        candidates = [name] + [str(d / name) for d in dirs() if (d / name).is_file()]
        for candidate in candidates:
            try:
                load(candidate)
                break
            except OSError:
                continue
        else:
            return (f"onnxruntime-gpu's TensorrtExecutionProvider needs {name} (TensorRT 10), which is not "
                    f"installed (the [gpu] extra brings TensorRT 11): {ORT_TRT_EXTRA} instead of [gpu], or use "
                    "--backend trt")
    return None
