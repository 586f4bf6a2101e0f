"""Device resources are released when construction fails part-way and when their owner is dropped (issue 25
defect 15), against the TensorRT/CUDA stand-ins of tests/fake_trt.py and a stand-in for cuda.bindings'
runtime module under the real sdrt.backends.cuda_rt. NOT RUN ON A GPU."""

from __future__ import annotations

import gc
import itertools
from types import SimpleNamespace

import pytest

import fake_trt
from sdrt.backends import cuda_rt, trt_engine

STATIC = [[1, 4], [1, 4], [1, 4]]


class FakeRuntime:
    """cuda.bindings.runtime's calling convention ((error, *values)) over a dict of live handles."""

    cudaError_t = SimpleNamespace(cudaSuccess=0)
    cudaStreamNonBlocking = 1

    def __init__(self) -> None:
        self.live: dict[int, str] = {}
        self.freed: list[tuple[str, int]] = []
        self._ids = itertools.count(0x1000, 0x100)

    def _new(self, kind: str) -> tuple[int, int]:
        handle = next(self._ids)
        self.live[handle] = kind
        return 0, handle

    def _free(self, call: str, handle: int) -> tuple[int]:
        self.freed.append((call, int(handle)))
        return (0,) if self.live.pop(int(handle), None) is not None else (1,)  # freeing twice is an error

    def cudaGetErrorName(self, err: int) -> tuple[int, bytes]:
        return 0, b"cudaErrorInvalidValue"

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[int, int]:
        return self._new("stream")

    def cudaMalloc(self, n: int) -> tuple[int, int]:
        return self._new("device")

    def cudaMallocHost(self, n: int) -> tuple[int, int]:
        return self._new("pinned")

    def cudaStreamDestroy(self, s: int) -> tuple[int]:
        return self._free("cudaStreamDestroy", s)

    def cudaFree(self, p: int) -> tuple[int]:
        return self._free("cudaFree", p)

    def cudaFreeHost(self, p: int) -> tuple[int]:
        return self._free("cudaFreeHost", p)

    def cudaGraphExecDestroy(self, g: int) -> tuple[int]:
        return self._free("cudaGraphExecDestroy", g)


@pytest.fixture()
def runtime(monkeypatch) -> FakeRuntime:
    rt = FakeRuntime()
    monkeypatch.setattr(cuda_rt, "cudart", lambda: rt)
    return rt


def test_cuda_rt_objects_free_themselves_when_dropped(runtime) -> None:
    graph = runtime._new("graph")[1]
    objects = [cuda_rt.DeviceBuffer(64), cuda_rt.HostBuffer(64), cuda_rt.Stream(), cuda_rt.Graph(graph)]
    assert sorted(runtime.live.values()) == ["device", "graph", "pinned", "stream"]
    del objects
    gc.collect()
    assert runtime.live == {}
    assert sorted(call for call, _ in runtime.freed) == ["cudaFree", "cudaFreeHost", "cudaGraphExecDestroy",
                                                         "cudaStreamDestroy"]


def test_explicit_free_is_not_repeated_by_the_finalizer(runtime) -> None:
    buf, stream = cuda_rt.DeviceBuffer(64), cuda_rt.Stream()
    buf.free()
    stream.destroy()
    del buf, stream
    gc.collect()
    assert [call for call, _ in runtime.freed] == ["cudaFree", "cudaStreamDestroy"] and runtime.live == {}


def test_a_session_that_fails_part_way_frees_everything_it_made(cuda, tmp_path) -> None:
    """The UNet's context cannot be created (TensorRT returns None when out of memory): the text encoder's
    buffers, the shared activation memory and the stream made before it are freed, not leaked."""
    plans = {}
    for name, data in {"text_encoder": fake_trt.plan_bytes([STATIC]),
                       "unet": fake_trt.plan_bytes([STATIC], no_context=True)}.items():
        plans[name] = tmp_path / f"{name}.plan"
        plans[name].write_bytes(data)
    with pytest.raises(RuntimeError, match="TensorRT could not create an execution context for unet"):
        trt_engine.TrtSession(plans)
    assert (cuda.memory, cuda.pinned, cuda.streams_destroyed) == ({}, {}, 1)


def test_close_frees_everything_once(cuda, tmp_path) -> None:
    path = tmp_path / "unet.plan"
    path.write_bytes(fake_trt.plan_bytes([STATIC]))
    session = trt_engine.TrtSession({"unet": path})
    session.close()
    session.close()
    assert (cuda.memory, cuda.pinned, cuda.streams_destroyed) == ({}, {}, 1)
