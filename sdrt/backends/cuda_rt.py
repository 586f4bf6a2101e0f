"""The few CUDA runtime calls the TensorRT backend needs, through NVIDIA's cuda-python (`cuda.bindings`).

Why cuda-python and not CuPy: we need streams, raw device allocations, async copies and stream capture into
CUDA graphs, and nothing else: no device arrays, no kernels, no math. cuda-bindings is NVIDIA's own 1:1
binding of the CUDA runtime (the same calls TensorRT's samples and its Stable Diffusion demo make), a
small wheel with no CUDA math libraries, versioned with the CUDA toolkit TensorRT targets, and it hands
back plain integer device pointers, which is what `IExecutionContext.set_tensor_address` takes. CuPy
would bring a large per-CUDA-version wheel and an array library we would use only as an allocator. The
cost of cuda-bindings is its calling convention (every call returns (error, *results)), which `check`
below absorbs.

Every object also frees itself when garbage-collected (weakref.finalize), so a construction that fails
part-way, or an owner that is dropped without close(), does not leak device or pinned memory; explicit
free()/destroy() stays the normal path (it detaches the finalizer).

Written to the documented cuda-bindings 12/13 API; not run on a GPU yet. Imported lazily: importing this
module does not import cuda.bindings.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..errors import UserError

GPU_EXTRA = "pip install 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com"


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message carries the call and CUDA's error name."""


def cudart() -> Any:
    try:
        from cuda.bindings import runtime  # noqa: PLC0415
    except ImportError:
        raise UserError(f"cuda-python is not installed (import cuda.bindings failed): {GPU_EXTRA}") from None
    return runtime


def check(result: Any, call: str = "CUDA call") -> Any:
    """Unpack cuda-bindings' (error, *values) convention: raise on error, return None / the value / a tuple."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        raise CudaError(f"{call} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _release(call: str, handle: Any) -> None:
    """A finalizer's free: never raises (it may run at interpreter exit, or after the context is gone)."""
    try:
        getattr(cudart(), call)(handle)
    except Exception:  # noqa: BLE001
        pass


def native_handle(obj: Any) -> int:
    """Integer handle of a cuda-bindings object (int(obj) is deprecated from cuda-bindings 13)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle  # noqa: PLC0415

        return int(get_cuda_native_handle(obj))
    except ImportError:  # cuda-bindings 12
        return int(obj)


# The [gpu] extra installs the CUDA 13 stack (TensorRT 11.4, onnxruntime-gpu 1.31, cuda-bindings 13), which
# needs a driver that supports CUDA 13.0: R580 or newer (580.65.06 on Linux, per CUDA 13.0's release notes).
DRIVER_NOTE = "CUDA 13 needs NVIDIA driver 580.65.06 or newer"


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def check_driver() -> None:
    """One line at start-up when the driver is older than the CUDA runtime sdrt's stack installed (every
    later call would fail with cudaErrorInsufficientDriver, far from the cause)."""
    rt = cudart()
    driver = int(check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion"))
    runtime = int(check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))
    if driver < runtime // 1000 * 1000:
        note = f" ({DRIVER_NOTE})" if runtime >= 13000 else ""
        raise UserError(f"the NVIDIA driver supports CUDA {_cuda_version(driver)} but the installed CUDA runtime is "
                        f"{_cuda_version(runtime)}{note}: update the driver (nvidia-smi shows its version)")


def device_count() -> int:
    return int(check(cudart().cudaGetDeviceCount(), "cudaGetDeviceCount"))


def device_properties(device: int = 0) -> tuple[str, int, int]:
    """(name, compute capability major, minor) of `device`."""
    prop = check(cudart().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode()
    return str(name), int(prop.major), int(prop.minor)


def mem_get_info() -> tuple[int, int]:
    """(free, total) bytes of the current device."""
    free, total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free), int(total)


class Stream:
    """A non-blocking stream: TensorRT's execute_async_v3 must not run on the legacy default stream,
    and stream capture of the default stream is not allowed."""

    def __init__(self) -> None:
        rt = cudart()
        self.obj = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self.handle = native_handle(self.obj)
        self._finalizer = weakref.finalize(self, _release, "cudaStreamDestroy", self.obj)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.obj), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.obj is not None:
            self._finalizer.detach()
            check(cudart().cudaStreamDestroy(self.obj), "cudaStreamDestroy")
            self.obj = None


class DeviceBuffer:
    """One cudaMalloc allocation (256-byte aligned, as TensorRT requires for activation memory)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(cudart().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))
        self._finalizer = weakref.finalize(self, _release, "cudaFree", self.ptr)  # if free() is never reached

    def free(self) -> None:
        if self.ptr:
            self._finalizer.detach()
            check(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class HostBuffer:
    """Page-locked (pinned) host memory from cudaMallocHost. An async copy from or to pageable memory is
    staged by the driver and synchronous with the host; from pinned memory it is a real DMA on the stream,
    so the per-step input and output copies go through these."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(cudart().cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})"))
        self._finalizer = weakref.finalize(self, _release, "cudaFreeHost", self.ptr)

    def array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy view of the first bytes of this buffer (valid until free())."""
        import ctypes  # noqa: PLC0415

        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"{shape} {dtype} does not fit a {self.nbytes}-byte pinned buffer")
        raw = (ctypes.c_byte * max(count * dtype.itemsize, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self._finalizer.detach()
            check(cudart().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


def copy_to_device(dst: int, array: np.ndarray, stream: Stream) -> None:
    """Host array -> device pointer; `array` (pinned: a HostBuffer view) must stay alive and unchanged
    until the stream is synchronized."""
    rt = cudart()
    check(
        rt.cudaMemcpyAsync(dst, array.ctypes.data, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.obj),
        "cudaMemcpyAsync(host to device)",
    )


def copy_to_host(array: np.ndarray, src: int, stream: Stream) -> None:
    rt = cudart()
    check(
        rt.cudaMemcpyAsync(array.ctypes.data, src, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.obj),
        "cudaMemcpyAsync(device to host)",
    )


class Graph:
    """An instantiated CUDA graph captured from one stream; launch() replays it on a stream."""

    def __init__(self, exec_obj: Any) -> None:
        self.exec = exec_obj
        self._finalizer = weakref.finalize(self, _release, "cudaGraphExecDestroy", exec_obj)

    def launch(self, stream: Stream) -> None:
        check(cudart().cudaGraphLaunch(self.exec, stream.obj), "cudaGraphLaunch")

    def destroy(self) -> None:
        if self.exec is not None:
            self._finalizer.detach()
            check(cudart().cudaGraphExecDestroy(self.exec), "cudaGraphExecDestroy")
            self.exec = None


def begin_capture(stream: Stream) -> None:
    """Thread-local capture: CUDA calls from other threads (a progress bar, NVML sampling) do not break it."""
    rt = cudart()
    check(
        rt.cudaStreamBeginCapture(stream.obj, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
        "cudaStreamBeginCapture",
    )


def end_capture(stream: Stream) -> Graph:
    """End capture and instantiate; the graph template is destroyed once the executable exists."""
    rt = cudart()
    graph = check(rt.cudaStreamEndCapture(stream.obj), "cudaStreamEndCapture")
    try:
        exec_obj = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    finally:
        check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
    return Graph(exec_obj)


def abort_capture(stream: Stream) -> None:
    """End a capture that failed part-way, discarding whatever was recorded."""
    rt = cudart()
    err, graph = rt.cudaStreamEndCapture(stream.obj)
    if err == rt.cudaError_t.cudaSuccess and graph is not None:
        rt.cudaGraphDestroy(graph)
    rt.cudaGetLastError()  # clear the error the failed capture left, so the next call is not blamed for it
