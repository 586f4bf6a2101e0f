"""Stand-ins for `tensorrt` and sdrt.runtime.cuda_rt, so the TensorRT backend's control flow (profile
choice and switching, persistent buffers, per-shape CUDA graphs, capture fallback, shared activation
memory) runs on CPU. They model the semantics the backend relies on, not TensorRT's internals:

- device memory is a dict of byte arrays keyed by pointer; copies move bytes;
- the "engine" computes y = 2x + 1 (float32) reading and writing the bound tensor addresses;
- while a stream is being captured, execute_async_v3 records the work with the shapes and addresses of
  that moment instead of running it, and launching the graph replays the recording, as a CUDA graph does.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import numpy as np


class FakeCuda:
    """The cuda_rt functions trt_engine uses, over host memory."""

    class CudaError(RuntimeError):
        pass

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self._next = 0x1000
        self.capturing: list | None = None
        self.graphs_destroyed = 0
        self.launches = 0
        fake = self

        class DeviceBuffer:
            def __init__(self, nbytes: int) -> None:
                self.nbytes = max(int(nbytes), 1)
                self.ptr = fake._next
                fake._next += self.nbytes + 256
                fake.memory[self.ptr] = np.zeros(self.nbytes, np.uint8)

            def free(self) -> None:
                fake.memory.pop(self.ptr, None)
                self.ptr = 0

        class Stream:
            handle = 7

            def synchronize(self) -> None:
                pass

            def destroy(self) -> None:
                pass

        class Graph:
            def __init__(self, ops: list) -> None:
                self.ops = ops

            def launch(self, stream: Any) -> None:
                fake.launches += 1
                for op in self.ops:
                    op()

            def destroy(self) -> None:
                fake.graphs_destroyed += 1

        self.DeviceBuffer, self.Stream, self.Graph = DeviceBuffer, Stream, Graph

    def copy_to_device(self, dst: int, array: np.ndarray, stream: Any) -> None:
        if array.nbytes > self.memory[dst].nbytes:
            raise AssertionError(f"copy of {array.nbytes} bytes overflows a {self.memory[dst].nbytes}-byte buffer")
        self.memory[dst][: array.nbytes] = np.frombuffer(array.tobytes(), np.uint8)

    def copy_to_host(self, array: np.ndarray, src: int, stream: Any) -> None:
        array.reshape(-1).view(np.uint8)[:] = self.memory[src][: array.nbytes]

    def begin_capture(self, stream: Any) -> None:
        self.capturing = []

    def end_capture(self, stream: Any) -> Any:
        ops, self.capturing = self.capturing, None
        return self.Graph(ops)

    def abort_capture(self, stream: Any) -> None:
        self.capturing = None


class FakeContext:
    def __init__(self, engine: "FakeEngine", cuda: FakeCuda) -> None:
        self.engine, self.cuda = engine, cuda
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.device_memory: tuple[int, int] | None = None
        self.eager_runs = 0
        self.fail_capture_for: set[tuple[int, ...]] = set()

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.device_memory = (ptr, size)

    def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
        self.profile = profile
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        lo, _, hi = self.engine.profiles[self.profile]
        shape = tuple(shape)
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = shape
        return True

    def infer_shapes(self) -> list[str]:
        return []

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["x"]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        shape, src, dst = self.shapes["x"], self.addresses["x"], self.addresses["y"]
        n = math.prod(shape) * 4

        def op() -> None:
            x = self.cuda.memory[src][:n].view(np.float32)
            self.cuda.memory[dst][:n] = np.frombuffer((x * 2 + 1).astype(np.float32).tobytes(), np.uint8)

        if self.cuda.capturing is not None:
            if shape in self.fail_capture_for:
                return False
            self.cuda.capturing.append(op)
        else:
            self.eager_runs += 1
            op()
        return True


class FakeEngine:
    """Inputs x (float32), output y = 2x + 1; profiles are (min, opt, max) shapes of x."""

    num_io_tensors = 2

    def __init__(self, profiles: list, activation_bytes: int, cuda: FakeCuda) -> None:
        self.profiles = [tuple(tuple(s) for s in p) for p in profiles]
        self.num_optimization_profiles = len(self.profiles)
        self.device_memory_size_v2 = activation_bytes
        self.cuda = cuda
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i: int) -> str:
        return ("x", "y")[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "x" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> Any:
        return np.float32

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, -1)

    def get_tensor_profile_shape(self, name: str, profile: int) -> list:
        return [list(s) for s in self.profiles[profile]]

    def create_execution_context(self, strategy: str) -> FakeContext:
        assert strategy == "USER_MANAGED"
        ctx = FakeContext(self, self.cuda)
        self.contexts.append(ctx)
        return ctx


def plan_bytes(profiles: list, activation_bytes: int = 4096) -> bytes:
    return json.dumps({"profiles": profiles, "activation": activation_bytes}).encode()


def fake_tensorrt(cuda: FakeCuda) -> SimpleNamespace:
    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            try:
                d = json.loads(data)
            except ValueError:
                return None
            return FakeEngine(d["profiles"], d["activation"], cuda)

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    return SimpleNamespace(
        __version__="11.4.0.fake",
        ExecutionContextAllocationStrategy=SimpleNamespace(USER_MANAGED="USER_MANAGED"),
        TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        nptype=lambda t: t,
        Logger=Logger,
        Runtime=Runtime,
    )
