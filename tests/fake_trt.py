"""Stand-ins for `tensorrt` and sdrt.backends.cuda_rt, so the TensorRT backend's control flow (profile
choice and switching, persistent buffers, per-shape CUDA graphs, capture fallback, shared activation
memory, pinned copies) runs on CPU. They reproduce the semantics real TensorRT and CUDA impose where a
mistake would pass silently otherwise (docs/gpu.md has the table of what they do and do not show):

- device memory is a dict of byte arrays keyed by pointer; host memory used by async copies must be
  pinned (a HostBuffer), as only pinned copies are asynchronous on a real GPU;
- copies, kernel launches and graph launches are queued on a stream and run, in order, at synchronize():
  reading an output before synchronizing sees stale bytes, as on a GPU;
- the "engine" computes y = 2x + 1 in the tensor's dtype, reading and writing the bound addresses;
- a captured graph replays its work reading the execution context's state AT LAUNCH: if the context has
  since been given other shapes or another profile, the replay raises (undefined behaviour on a GPU);
- capturing an enqueue right after a shape or profile change fails (TensorRT may do host work on the
  first enqueue after a change; NVIDIA's samples and trtexec enqueue once eagerly before capturing);
- set_optimization_profile_async raises on failure (TensorRT's Python binding does); several contexts may
  share a profile (TensorRT forbids that only in concurrent use), but every enqueue and profile switch must
  name the one stream the session created: its integer handle, type and value checked;
- set_device_memory checks the size against the engine's device_memory_size_v2 and that the pointer is a
  live device allocation of at least that size;
- tensor dtypes are TensorRT DataType values mapped by nptype() like trt.nptype (BF16 has no numpy type:
  TypeError).
- refitting (LoRA): the engine's y = scale * x + bias reads named weights `scale` and `bias` at launch; a plan
  built refittable takes new ones through `Refitter`: set_named_weights returns False for a name the engine
  does not have or a value of another size or dtype (TensorRT logs an error and returns False), weights the
  build combined (plan "combined": groups of names) must be set together - get_missing_weights() names the
  rest, and refit_cuda_engine() returns False while any is missing; a non-refittable engine refuses a Refitter.
  With `engine.refit_applies = n`, refit_cuda_engine() applies only the first n weights set and returns False
  (TensorRT: "if false is returned, a subset of weights may have been refitted").
- `OnnxEngine` (plan_bytes(..., onnx=PATH)): an engine of several inputs and outputs computing an exported ONNX
  graph with ONNX Runtime on CPU; dynamic dims are -1 as engine.get_tensor_shape reports them (the ONNX
  symbolic names are lost, as in a real plan), profiles are (min, opt, max) per input;
- freed pinned memory is poisoned (0xFF bytes: NaN floats), so an array still viewing it reads garbage;
- sticky errors: after `inject_illegal_address()` the next synchronize fails with cudaErrorIllegalAddress and
  so does every later CUDA call (a corrupted CUDA context), as on a GPU.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np


class FakeCudaError(RuntimeError):
    """What a real GPU would report as an illegal address or an invalidated capture."""


class DataType:
    """TensorRT's DataType enum values the fake engines use."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


DTYPES = {name: DataType(name) for name in ("FLOAT", "HALF", "INT32", "INT64", "BOOL", "BF16")}
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


def nptype(t: DataType) -> type:
    """Like trt.nptype: numpy type of a TensorRT DataType; TypeError for types numpy lacks (BF16, FP8)."""
    try:
        return _NP[t.name]
    except KeyError:
        raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype: {t}") from None


class FakeCuda:
    """The cuda_rt functions trt_engine uses, over host memory, with stream order."""

    class CudaError(RuntimeError):
        pass

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.pinned: dict[int, np.ndarray] = {}  # base address -> bytes of each live HostBuffer
        self._next = 0x1000
        self.capturing: list | None = None
        self.capture_broken = False
        self.graphs_destroyed = 0
        self.captures = 0
        self.launches = 0
        self.log: list[str] = []  # what ran on the stream, in order
        self.stream: Any = None  # the last stream created
        self.streams_destroyed = 0
        self._handles = iter(range(0x7F00, 0x7FFF))
        self.sticky: str | None = None  # a sticky CUDA error: every later call fails with it
        self._illegal_next = False
        fake = self

        class DeviceBuffer:
            def __init__(self, nbytes: int) -> None:
                fake.check_sticky("cudaMalloc")
                self.nbytes = max(int(nbytes), 1)
                self.ptr = fake._next
                fake._next += self.nbytes + 256
                fake.memory[self.ptr] = np.zeros(self.nbytes, np.uint8)

            def free(self) -> None:
                fake.check_sticky("cudaFree")
                fake.memory.pop(self.ptr, None)
                self.ptr = 0

        class HostBuffer:
            def __init__(self, nbytes: int) -> None:
                fake.check_sticky("cudaMallocHost")
                self.nbytes = max(int(nbytes), 1)
                self._bytes = np.zeros(self.nbytes, np.uint8)
                self.ptr = self._bytes.ctypes.data
                fake.pinned[self.ptr] = self._bytes

            def array(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
                dtype = np.dtype(dtype)
                n = math.prod(shape) * dtype.itemsize
                assert n <= self.nbytes, "view larger than the pinned buffer"
                return self._bytes[:n].view(dtype).reshape(shape)

            def free(self) -> None:
                fake.check_sticky("cudaFreeHost")
                fake.pinned.pop(self.ptr, None)
                self._bytes[:] = 0xFF  # poisoned: a view read after cudaFreeHost sees garbage (NaN floats)
                self.ptr = 0

        class Stream:
            def __init__(self) -> None:
                self.queue: list[tuple[str, Callable[[], None]]] = []
                self.handle = next(fake._handles)  # an int, as cuda_rt.Stream.handle
                fake.stream = self

            def put(self, what: str, op: Callable[[], None]) -> None:
                if fake.capturing is not None:
                    fake.capturing.append((what, op))
                else:
                    self.queue.append((what, op))

            def synchronize(self) -> None:
                if fake._illegal_next:  # a kernel of this stream's work read an illegal address
                    fake._illegal_next, fake.sticky, self.queue = False, "cudaErrorIllegalAddress", []
                fake.check_sticky("cudaStreamSynchronize")
                queue, self.queue = self.queue, []
                for what, op in queue:
                    fake.log.append(what)
                    op()
                fake.log.append("sync")

            def destroy(self) -> None:
                fake.streams_destroyed += 1

        class Graph:
            def __init__(self, ops: list) -> None:
                self.ops = ops

            def launch(self, stream: Any) -> None:
                fake.check_sticky("cudaGraphLaunch")
                fake.launches += 1
                for what, op in self.ops:
                    stream.queue.append((f"graph:{what}", op))

            def destroy(self) -> None:
                fake.graphs_destroyed += 1

        self.DeviceBuffer, self.HostBuffer, self.Stream, self.Graph = DeviceBuffer, HostBuffer, Stream, Graph

    def check_stream(self, stream: Any, call: str) -> None:
        """TensorRT takes the stream as its integer handle: the one of the session's stream, nothing else."""
        if type(stream) is not int or self.stream is None or stream != self.stream.handle:
            raise AssertionError(f"{call} got stream {stream!r} ({type(stream).__name__}), not the session "
                                 f"stream's handle {getattr(self.stream, 'handle', None)!r}")

    def inject_illegal_address(self) -> None:
        """The next synchronize reports an illegal address; from then on every CUDA call fails (sticky)."""
        self._illegal_next = True

    def check_sticky(self, call: str) -> None:
        if self.sticky is not None:
            raise self.CudaError(f"{call} failed: {self.sticky}")

    def _pinned(self, array: np.ndarray) -> None:
        self.check_sticky("cudaMemcpyAsync")
        start = array.ctypes.data
        for base, data in self.pinned.items():
            if base <= start and start + array.nbytes <= base + data.nbytes:
                return
        raise AssertionError("async copy from pageable host memory (synchronous on a GPU): use a pinned HostBuffer")

    def copy_to_device(self, dst: int, array: np.ndarray, stream: Any) -> None:
        self._pinned(array)
        if array.nbytes > self.memory[dst].nbytes:
            raise AssertionError(f"copy of {array.nbytes} bytes overflows a {self.memory[dst].nbytes}-byte buffer")
        stream.put("h2d", lambda: self.memory[dst].__setitem__(slice(0, array.nbytes),
                                                               np.frombuffer(array.tobytes(), np.uint8)))

    def copy_to_host(self, array: np.ndarray, src: int, stream: Any) -> None:
        self._pinned(array)

        def op() -> None:
            array.reshape(-1).view(np.uint8)[:] = self.memory[src][: array.nbytes]

        stream.put("d2h", op)

    def begin_capture(self, stream: Any) -> None:
        self.check_sticky("cudaStreamBeginCapture")
        assert self.capturing is None, "capture already in progress"
        self.capturing, self.capture_broken = [], False

    def end_capture(self, stream: Any) -> Any:
        ops, self.capturing = self.capturing, None
        if self.capture_broken:
            raise self.CudaError("cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalidated")
        self.captures += 1
        return self.Graph(ops)

    def abort_capture(self, stream: Any) -> None:
        self.capturing = None


class FakeContext:
    def __init__(self, engine: "FakeEngine", cuda: FakeCuda) -> None:
        self.engine, self.cuda = engine, cuda
        self.profile = 0
        engine.profile_users[0] = engine.profile_users.get(0, 0) + 1
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.device_memory: tuple[int, int] | None = None
        self.eager_runs = 0
        self.changed = True  # shapes or profile changed since the last eager enqueue

    def set_device_memory(self, ptr: int, size: int) -> None:
        need = self.engine.device_memory_size_v2
        if size < need:
            raise AssertionError(f"set_device_memory size {size} < device_memory_size_v2 {need}")
        held = self.cuda.memory.get(ptr)
        if held is None or held.nbytes < size:
            raise AssertionError(f"set_device_memory({ptr:#x}, {size}): not a live allocation of that size")
        self.device_memory = (ptr, size)

    def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
        self.cuda.check_stream(stream, "set_optimization_profile_async")
        if not 0 <= profile < self.engine.num_optimization_profiles:
            raise RuntimeError(f"profile index {profile} is out of range")
        self.engine.profile_users[self.profile] -= 1
        self.engine.profile_users[profile] = self.engine.profile_users.get(profile, 0) + 1
        self.profile, self.shapes, self.changed = profile, {}, True
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        lo, _, hi = self.engine.profiles[self.profile]
        shape = tuple(shape)
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        if self.shapes.get(name) != shape:
            self.shapes[name], self.changed = shape, True
        return True

    def infer_shapes(self) -> list[str]:
        return []

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["x"]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def _state(self) -> tuple:
        return self.profile, tuple(sorted(self.shapes.items())), tuple(sorted(self.addresses.items()))

    def execute_async_v3(self, stream: Any) -> bool:
        self.cuda.check_stream(stream, "execute_async_v3")
        if self.cuda.sticky is not None:
            return False  # TensorRT logs the CUDA error and returns False
        assert self.device_memory is not None, "USER_MANAGED context enqueued without set_device_memory"
        captured = self._state()
        dtype = np.dtype(nptype(self.engine.dtype))

        def op() -> None:
            if self._state() != captured:  # a kernel reads the context's shapes and addresses at launch
                raise FakeCudaError("CUDA graph replayed while its execution context is in another state than "
                                    "at capture (shapes/profile changed): undefined behaviour on a GPU")
            shape, src, dst = self.shapes["x"], self.addresses["x"], self.addresses["y"]
            n = math.prod(shape) * dtype.itemsize
            x = self.cuda.memory[src][:n].view(dtype)
            w = self.engine.weights
            y = (x * w["scale"].astype(dtype)[0] + w["bias"].astype(dtype)[0]).astype(dtype)
            self.cuda.memory[dst][:n] = np.frombuffer(y.tobytes(), np.uint8)

        if self.cuda.capturing is not None:
            if self.changed or self.shapes["x"] in self.engine.fail_capture_for:
                self.cuda.capture_broken = True  # host-side work after a shape change invalidates capture
                return False
            self.cuda.capturing.append(("enqueue", op))
            return True
        return self._run_eagerly(op)

    def _run_eagerly(self, op: Any) -> bool:
        self.eager_runs += 1
        self.changed = False
        self.cuda.stream.put("enqueue", op)
        return True


class FakeEngine:
    """Input x, output y = 2x + 1 (dtype from the plan); profiles are (min, opt, max) shapes of x."""

    num_io_tensors = 2

    def __init__(self, profiles: list, activation_bytes: int, cuda: FakeCuda, dtype: str = "FLOAT",
                 refittable: bool = False, combined: list | None = None, no_context: bool = False) -> None:
        self.refittable = refittable
        self.no_context = no_context  # create_execution_context returns None (TensorRT: out of memory)
        self.refit_applies: int | None = None
        self.fail_capture_for: set[tuple[int, ...]] = set()  # shapes of x whose capture is invalidated
        self.weights = {n: np.array([v], dtype=nptype(DTYPES[dtype])) for n, v in (("scale", 2), ("bias", 1))}
        self.combined = [set(g) for g in combined or []]
        self.refits = 0
        self.profiles = [tuple(tuple(s) for s in p) for p in profiles]
        self.num_optimization_profiles = len(self.profiles)
        self.device_memory_size_v2 = activation_bytes
        self.cuda = cuda
        self.dtype = DTYPES[dtype]
        self.contexts: list[FakeContext] = []
        self.profile_users: dict[int, int] = {}

    def get_tensor_name(self, i: int) -> str:
        return ("x", "y")[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "x" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.dtype

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, -1)

    def get_tensor_profile_shape(self, name: str, profile: int) -> list:
        return [list(s) for s in self.profiles[profile]]

    def create_execution_context(self, strategy: str) -> FakeContext | None:
        assert strategy == "USER_MANAGED"
        if self.no_context:
            return None
        ctx = FakeContext(self, self.cuda)
        self.contexts.append(ctx)
        return ctx


_ORT_DTYPES = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(int32)": "INT32",
               "tensor(int64)": "INT64", "tensor(bool)": "BOOL"}


class OnnxContext(FakeContext):
    """An execution context of an OnnxEngine: every input has its own shape and profile range."""

    def set_input_shape(self, name: str, shape: Any) -> bool:
        lo, _, hi = self.engine.profiles[self.profile][name]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        if self.shapes.get(name) != shape:
            self.shapes[name], self.changed = shape, True
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.engine.input_names:
            return self.shapes[name]
        return self.engine.output_shapes(self.shapes)[name]

    def execute_async_v3(self, stream: Any) -> bool:
        self.cuda.check_stream(stream, "execute_async_v3")
        if self.cuda.sticky is not None:
            return False  # TensorRT logs the CUDA error and returns False
        assert self.device_memory is not None, "USER_MANAGED context enqueued without set_device_memory"
        captured = self._state()

        def op() -> None:
            if self._state() != captured:
                raise FakeCudaError("CUDA graph replayed while its execution context is in another state than "
                                    "at capture (shapes/profile changed): undefined behaviour on a GPU")
            feeds = {}
            for n in self.engine.input_names:
                dtype, shape = self.engine.dtypes[n], self.shapes[n]
                nbytes = math.prod(shape) * dtype.itemsize
                feeds[n] = self.cuda.memory[self.addresses[n]][:nbytes].view(dtype).reshape(shape)
            for n, value in self.engine.compute(feeds).items():
                data = np.frombuffer(np.ascontiguousarray(value, self.engine.dtypes[n]).tobytes(), np.uint8)
                dst = self.cuda.memory[self.addresses[n]]
                assert data.nbytes <= dst.nbytes, f"output {n} overflows its {dst.nbytes}-byte buffer"
                dst[:data.nbytes] = data

        if self.cuda.capturing is not None:
            if self.changed:
                self.cuda.capture_broken = True
                return False
            self.cuda.capturing.append(("enqueue", op))
            return True
        return self._run_eagerly(op)


class OnnxEngine:
    """An engine computing an ONNX graph (ONNX Runtime on CPU) with every input and output of the graph,
    dynamic dims reported as -1 as TensorRT does, and (min, opt, max) profiles per input."""

    refittable = False

    def __init__(self, onnx: str, profiles: list[dict], activation_bytes: int, cuda: FakeCuda) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        self.cuda = cuda
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        self.input_names = [i.name for i in ins]
        self.names = self.input_names + [o.name for o in outs]
        self.nodes = {n.name: n for n in ins + outs}
        self.trt_dtypes = {n.name: DTYPES[_ORT_DTYPES[n.type]] for n in ins + outs}
        self.dtypes = {n: np.dtype(nptype(t)) for n, t in self.trt_dtypes.items()}
        self.num_io_tensors = len(self.names)
        self.profiles = [{n: tuple(tuple(int(d) for d in s) for s in r) for n, r in p.items()} for p in profiles]
        for p in self.profiles:
            assert set(p) == set(self.input_names), f"a profile needs every input {self.input_names}"
        self.num_optimization_profiles = len(self.profiles)
        self.device_memory_size_v2 = activation_bytes
        self.weights: dict[str, np.ndarray] = {}
        self.contexts: list[FakeContext] = []
        self.profile_users: dict[int, int] = {}
        self.fail_capture_for: set[tuple[int, ...]] = set()
        self._shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}
        self.batches: dict[str, list[int]] = {n: [] for n in self.input_names}  # the batch of every run, per input

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name in self.input_names else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.trt_dtypes[name]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in self.nodes[name].shape)

    def get_tensor_profile_shape(self, name: str, profile: int) -> list:
        return [list(s) for s in self.profiles[profile][name]]

    def create_execution_context(self, strategy: str) -> FakeContext:
        assert strategy == "USER_MANAGED"
        ctx = OnnxContext(self, self.cuda)
        self.contexts.append(ctx)
        return ctx

    def output_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Output shapes for these input shapes (TensorRT infers them; here: one run on zeros, cached)."""
        key = tuple(sorted(shapes.items()))
        if key not in self._shapes:
            zeros = {n: np.zeros(shapes[n], self.dtypes[n]) for n in self.input_names}
            outs = self.session.run(None, zeros)
            self._shapes[key] = {o.name: tuple(v.shape) for o, v in zip(self.session.get_outputs(), outs)}
        return self._shapes[key]

    def compute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for n, value in feeds.items():
            self.batches[n].append(value.shape[0])
        outs = self.session.run(None, {n: np.array(v) for n, v in feeds.items()})
        return {o.name: v for o, v in zip(self.session.get_outputs(), outs)}


def onnx_plan_bytes(onnx: str, profiles: list[dict], activation_bytes: int = 4096) -> bytes:
    """A plan of an OnnxEngine: `profiles` is a list of {input: [min, opt, max]} shapes."""
    return json.dumps({"onnx": str(onnx), "profiles": profiles, "activation": activation_bytes}).encode()


def plan_bytes(profiles: list, activation_bytes: int = 4096, dtype: str = "FLOAT", refittable: bool = False,
               combined: list | None = None, no_context: bool = False) -> bytes:
    return json.dumps({"profiles": profiles, "activation": activation_bytes, "dtype": dtype,
                       "refittable": refittable, "combined": combined or [], "no_context": no_context}).encode()


class Refitter:
    def __init__(self, engine: FakeEngine, logger: Any) -> None:
        if not engine.refittable:
            raise RuntimeError("Refitter: the engine was not built with BuilderFlag.REFIT")
        self.engine, self.pending = engine, {}

    def set_named_weights(self, name: str, weights: Any) -> bool:
        have = self.engine.weights.get(name)
        value = weights.array
        if have is None or value.size != have.size or value.dtype != have.dtype:
            return False
        self.pending[name] = value
        return True

    def get_missing_weights(self) -> list[str]:
        return sorted({n for g in self.engine.combined if g & set(self.pending) for n in g} - set(self.pending))

    def refit_cuda_engine(self) -> bool:
        if self.get_missing_weights():
            return False
        applies = self.engine.refit_applies
        for name, value in list(self.pending.items())[:applies]:
            self.engine.weights[name] = value.reshape(-1).copy()
        if applies is not None and applies < len(self.pending):
            return False  # a subset was refitted
        self.engine.refits += 1
        return True


def fake_tensorrt(cuda: FakeCuda, version: str = "11.4.0.fake") -> SimpleNamespace:
    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            try:
                d = json.loads(data)
            except ValueError:
                return None
            if "onnx" in d:
                return OnnxEngine(d["onnx"], d["profiles"], d["activation"], cuda)
            return FakeEngine(d["profiles"], d["activation"], cuda, d.get("dtype", "FLOAT"), d.get("refittable", False),
                              d.get("combined"), d.get("no_context", False))

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    return SimpleNamespace(
        __version__=version,
        ExecutionContextAllocationStrategy=SimpleNamespace(USER_MANAGED="USER_MANAGED"),
        TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        DataType=SimpleNamespace(**DTYPES),
        nptype=nptype,
        Logger=Logger,
        Runtime=Runtime,
        Refitter=Refitter,
        Weights=lambda array: SimpleNamespace(array=array),  # like trt.Weights(ndarray): no copy
    )
