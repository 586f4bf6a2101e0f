"""TensorRT backend: deserialized engines run on persistent device buffers, replayed as CUDA graphs.

Design (the points that make per-step latency low, each a known pitfall when missing):
- Execution contexts are created with USER_MANAGED activation memory, and ONE device allocation of
  max(engine.device_memory_size_v2) is shared by all contexts of all engines: a pipeline runs its engines
  one after another on one stream, so the text encoder, UNet and VAE never need their scratch memory at
  the same time (NVIDIA's Stable Diffusion demo does the same): activation memory is the largest engine's
  need, not the sum.
- Every input and output gets one device buffer at its largest shape over all profiles, bound once with
  set_tensor_address. Fixed addresses are what makes a captured CUDA graph replayable.
- execute_async_v3 on a non-blocking stream (the legacy default stream synchronizes with other work, and
  it cannot be captured).
- A small pool of execution contexts, one per (profile, input-shape set), bounded LRU: a CUDA graph bakes in
  its context's state at capture (changing it makes replay undefined), so each shape set keeps its own
  context and graph, and alternating sizes inside one dynamic profile replays both. TensorRT forbids
  sharing a profile only between contexts "in concurrent use"; these all run on one stream under one lock,
  one after another, sharing the activation memory.
- Capture on second use: a shape set's first run is eager; its second run (with the same weights: a
  LoRA refit counts as new weights) is eager and then captured, as NVIDIA's demo and trtexec enqueue once
  before capturing; later runs only launch the graph. So a size seen once, or LoRA adapter sets that
  alternate every step (each refit drops the graphs), never pay for a capture that is never replayed.
  A shape set whose capture fails runs eagerly from then on.
- Host copies go through pinned (page-locked) staging buffers: from pageable memory cudaMemcpyAsync is
  synchronous with the host.
- Dynamic engines: the optimization profile is picked by sdrt.engines.chooser (closest opt, tightest max)
  and out-of-range shapes are refused with the supported ranges before TensorRT sees them.

Interface: the runtime's Engine protocol (name, inputs, outputs, providers, run(feeds) -> outputs): host
arrays in, host arrays out that the caller owns: copies of the pinned staging arrays, which the staging
cache frees on eviction and close() frees (a view of freed pinned memory would read whatever the allocator
put there next); the copies are outside the graph. `run` holds the session's lock (see backends/engine.py).
Written to TensorRT 11's documented
Python API (see docs/gpu.md); NOT RUN ON A GPU YET.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..engines.chooser import choose_profile
from ..engines.profiles import ShapeRange
from ..errors import UserError
from . import cuda_rt
from .engine import IOSpec
from .graph_cache import LruCache, ShapeKey, shape_key

log = logging.getLogger(__name__)
DEFAULT_MAX_GRAPHS = 8


def _trt() -> Any:
    """tensorrt, checked to be a version this backend supports (one-line error otherwise)."""
    from ..engines.builder import import_tensorrt  # noqa: PLC0415

    return import_tensorrt()


@dataclass
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype
    buffer: cuda_rt.DeviceBuffer | None = None


@dataclass
class _Slot:
    """The execution context of one (profile, shape set), set to those shapes for its whole life."""

    context: Any
    profile: int
    key: ShapeKey


@dataclass
class _Host:
    """Pinned host staging arrays of one shape set (async copies need page-locked memory)."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    buffers: list


def _numpy_dtype(trt: Any, engine_name: str, tensor: str, trt_dtype: Any) -> np.dtype:
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError:
        raise UserError(f"{engine_name} engine tensor {tensor} has type {trt_dtype}, which numpy cannot hold: "
                        "rebuild the engine from an fp16 or fp32 bundle") from None


class TrtEngine:
    """One engine: a pool of execution contexts (one per shape set) on shared activation memory, persistent
    device buffers, pinned host staging, and a bounded cache of CUDA graphs keyed by shape set."""

    def __init__(
        self,
        name: str,
        engine: Any,
        stream: cuda_rt.Stream,
        activation: cuda_rt.DeviceBuffer,
        cuda_graphs: bool = True,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
        lock: threading.RLock | None = None,
    ) -> None:
        trt = _trt()
        self._trt_module = trt
        self.name, self.engine, self.stream, self.activation = name, engine, stream, activation
        self.lock = lock or threading.RLock()  # shared by a session's engines: one stream, one activation memory
        self.tensors: dict[str, _Tensor] = {}
        for i in range(engine.num_io_tensors):
            n = engine.get_tensor_name(i)
            self.tensors[n] = _Tensor(n, engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT,
                                      _numpy_dtype(trt, name, n, engine.get_tensor_dtype(n)))
        self.input_names = [t.name for t in self.tensors.values() if t.is_input]
        self.output_names = [t.name for t in self.tensors.values() if not t.is_input]
        self.inputs = {n: self._info(n) for n in self.input_names}
        self.outputs = {n: self._info(n) for n in self.output_names}
        self.profiles: list[dict[str, ShapeRange]] = [
            {n: ShapeRange(*(tuple(s) for s in engine.get_tensor_profile_shape(n, p))) for n in self.input_names}
            for p in range(engine.num_optimization_profiles)
        ]
        self._version = str(getattr(trt, "__version__", "?"))
        self.switch = None  # LoRA: the RefitSwitch of a refittable engine once adapters used it (trt_refit.py)
        self.cuda_graphs = cuda_graphs
        self.graphs: LruCache[cuda_rt.Graph] = LruCache(max_graphs if cuda_graphs else 0, lambda g: g.destroy())
        self._uncapturable: set[ShapeKey] = set()
        self._eager: dict[ShapeKey, int] = {}  # eager runs per shape set since its context or weights changed
        self._profile_of: dict[ShapeKey, int] = {}
        self._output_shapes: dict[ShapeKey, dict[str, tuple[int, ...]]] = {}
        self._host: LruCache[_Host] = LruCache(max(max_graphs, 8), lambda h: [b.free() for b in h.buffers])
        # The context pool: (shape set) -> its own context; evicting one drops its graph (module doc).
        self._slots: LruCache[_Slot] = LruCache(max(max_graphs, 1), self._drop_slot)
        try:
            self._allocate_buffers()
        except BaseException:
            self.close()  # what was allocated before the failure (the session frees the rest)
            raise

    def _new_context(self, profile: int) -> Any:
        trt = self._trt_module
        context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.name}")
        context.set_device_memory(self.activation.ptr, self.activation.nbytes)
        if profile:
            self._set_profile(context, profile)
        for t in self.tensors.values():
            if t.buffer is not None:
                context.set_tensor_address(t.name, t.buffer.ptr)
        return context

    @property
    def contexts(self) -> list[Any]:
        """The live execution contexts of the pool, least recently used first."""
        return [slot.context for slot in self._slots.values()]

    def _drop_slot(self, slot: _Slot) -> None:
        """A context leaves the pool: the graph captured on it goes with it."""
        self.graphs.pop(slot.key)
        self._eager.pop(slot.key, None)

    def weights_changed(self) -> None:
        """After a refit: graphs captured with the old weights are invalid, and capture waits for a second
        run with the new ones (LoRA sets that alternate every step would otherwise capture every step)."""
        self.graphs.clear()
        self._eager.clear()

    def _set_profile(self, context: Any, profile: int) -> None:
        try:
            ok = context.set_optimization_profile_async(profile, self.stream.handle)
        except Exception as exc:  # noqa: BLE001  (TensorRT's binding raises on failure)
            raise UserError(f"{self.name}: TensorRT refused optimization profile {profile} ({exc}): "
                            "rebuild the engine with sdrt build") from None
        if ok is False:
            raise UserError(f"{self.name}: TensorRT refused optimization profile {profile}: "
                            "rebuild the engine with sdrt build")

    def _info(self, name: str) -> IOSpec:
        dims = tuple(self.engine.get_tensor_shape(name))
        return IOSpec(name, self.tensors[name].dtype, tuple(d if d >= 0 else f"dim{i}" for i, d in enumerate(dims)))

    @property
    def providers(self) -> list[str]:
        return [f"TensorRT {self._version}"]

    # ---- setup -----------------------------------------------------------------------------------
    def _allocate_buffers(self) -> None:
        """Each tensor's buffer holds its largest shape over every profile; outputs are sized by asking
        each profile's context for output shapes at that profile's max input shapes."""
        nbytes = {n: 0 for n in self.tensors}
        sizing = [self._new_context(p) for p in range(max(len(self.profiles), 1))]  # dropped afterwards
        for prof, context in zip(self.profiles, sizing):
            for n in self.input_names:
                context.set_input_shape(n, prof[n].max)
                nbytes[n] = max(nbytes[n], math.prod(prof[n].max) * self.tensors[n].dtype.itemsize)
            for n in self.output_names:
                shape = tuple(context.get_tensor_shape(n))
                nbytes[n] = max(nbytes[n], math.prod(shape) * self.tensors[n].dtype.itemsize)
        self.stream.synchronize()
        for n, t in self.tensors.items():
            t.buffer = cuda_rt.DeviceBuffer(nbytes[n])

    # ---- running ---------------------------------------------------------------------------------
    def _prepare_inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(feeds) != set(self.input_names):
            raise UserError(f"{self.name} takes inputs {sorted(self.input_names)}, got {sorted(feeds)}")
        arrays = {}
        for n, value in feeds.items():
            want = self.tensors[n].dtype
            value = np.asarray(value)
            if value.dtype != want and not np.can_cast(value.dtype, want, "same_kind"):
                raise UserError(f"{self.name} input {n} must be {want}, got {value.dtype}")
            arrays[n] = value
        return arrays

    def _profile_for(self, key: ShapeKey, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """The profile serving this shape set; UserError (before any copy) when none contains it, which
        also guarantees the inputs fit the buffers (sized for the largest profile)."""
        profile = self._profile_of.get(key)
        if profile is None:
            profile = choose_profile(self.profiles, shapes, engine=f"{self.name} engine")
            self._profile_of[key] = profile
        return profile

    def _slot_for(self, profile: int, key: ShapeKey, shapes: Mapping[str, tuple[int, ...]]) -> _Slot:
        """The pool's context for this shape set, made (on the profile, set to the shapes) on first use."""
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        context = self._new_context(profile)
        for n, shape in shapes.items():
            if not context.set_input_shape(n, shape):
                raise UserError(f"{self.name}: TensorRT refused shape {shape} for {n} in profile {profile}: "
                                "rebuild the engine with sdrt build --profile covering it")
        unresolved = context.infer_shapes()
        if unresolved:
            raise RuntimeError(f"{self.name}: TensorRT could not infer shapes of {unresolved}")
        self._output_shapes[key] = {n: tuple(context.get_tensor_shape(n)) for n in self.output_names}
        slot = _Slot(context, profile, key)
        self._slots.put(key, slot)
        return slot

    def _enqueue(self, context: Any) -> None:
        if not context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (see TensorRT's log above)")

    def _capture(self, context: Any, key: ShapeKey) -> None:
        """Capture one enqueue into a graph; called right after an eager enqueue in the same state."""
        try:
            cuda_rt.begin_capture(self.stream)
            ok = context.execute_async_v3(self.stream.handle)
            if not ok:
                raise RuntimeError("execute_async_v3 returned False during capture")
            graph = cuda_rt.end_capture(self.stream)
        except Exception as exc:  # noqa: BLE001  (any capture failure means: run this shape eagerly)
            try:
                cuda_rt.abort_capture(self.stream)
            except Exception:  # noqa: BLE001
                pass
            self._uncapturable.add(key)
            log.warning("%s: CUDA graph capture failed for %s (%s); running it without a graph", self.name, key, exc)
            return
        self.graphs.put(key, graph)

    def _host_for(self, key: ShapeKey) -> _Host:
        host = self._host.get(key)
        if host is None:
            buffers, arrays = [], {}
            shapes = {**dict(key), **self._output_shapes[key]}
            for n, shape in shapes.items():
                dtype = self.tensors[n].dtype
                buf = cuda_rt.HostBuffer(math.prod(shape) * dtype.itemsize)
                buffers.append(buf)
                arrays[n] = buf.array(tuple(shape), dtype)
            host = _Host({n: arrays[n] for n in self.input_names}, {n: arrays[n] for n in self.output_names},
                         buffers)
            self._host.put(key, host)
        return host

    @property
    def max_batch(self) -> int:
        """The largest batch any optimization profile accepts (the batching loop caps its UNet calls here)."""
        return max((min(r.max[0] for r in prof.values() if r.max) for prof in self.profiles if prof), default=1)

    @property
    def min_batch(self) -> int:
        """The smallest batch any optimization profile accepts (smaller runs are padded up to it)."""
        return min((max(r.min[0] for r in prof.values() if r.min) for prof in self.profiles if prof), default=1)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            if self.switch is not None:
                self.switch.apply((), {})  # a plain run runs the base weights (LoRA views refit their own)
            return self._run_locked(feeds)

    def _run_locked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._prepare_inputs(feeds)
        shapes = {n: tuple(a.shape) for n, a in arrays.items()}
        key = shape_key(shapes)
        profile = self._profile_for(key, shapes)
        slot = self._slot_for(profile, key, shapes)
        graph = self.graphs.get(key) if self.cuda_graphs else None
        host = self._host_for(key)
        for n, a in arrays.items():
            np.copyto(host.inputs[n], a, casting="same_kind")
            cuda_rt.copy_to_device(self.tensors[n].buffer.ptr, host.inputs[n], self.stream)  # type: ignore[union-attr]
        if graph is not None:
            graph.launch(self.stream)
        else:
            self._enqueue(slot.context)  # the eager enqueue every capture must follow
            self._eager[key] = self._eager.get(key, 0) + 1
            if self.cuda_graphs and key not in self._uncapturable and self._eager[key] >= 2:
                self._capture(slot.context, key)  # second use with the same context state and weights
        for n, a in host.outputs.items():
            cuda_rt.copy_to_host(a, self.tensors[n].buffer.ptr, self.stream)  # type: ignore[union-attr]
        self.stream.synchronize()
        return {n: a.copy() for n, a in host.outputs.items()}  # the pinned arrays are freed on eviction/close

    def close(self) -> None:
        """Free in the reverse order of creation: graphs, contexts, host staging, device buffers."""
        self.graphs.clear()
        self._slots.clear()
        self._host.clear()
        for t in reversed(list(self.tensors.values())):
            if t.buffer is not None:
                t.buffer.free()
                t.buffer = None


class TrtSession:
    """Every engine of one pipeline on one stream and one shared activation allocation.

    plans: component name -> .plan path (already checked against this GPU target by sdrt.engines.store).
    """

    def __init__(
        self,
        plans: Mapping[str, str | Path],
        cuda_graphs: bool = True,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
    ) -> None:
        trt = _trt()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engines = {}
        for name, path in plans.items():
            engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if engine is None:
                raise UserError(
                    f"TensorRT {trt.__version__} cannot load engine {path} (built by another TensorRT version "
                    "or for another GPU?): rebuild it with sdrt build"
                )
            engines[name] = engine
        self.engines: dict[str, TrtEngine] = {}
        self.activation: cuda_rt.DeviceBuffer | None = None
        self.stream: cuda_rt.Stream | None = cuda_rt.Stream()
        try:
            size = max((e.device_memory_size_v2 for e in engines.values()), default=0)
            self.activation = cuda_rt.DeviceBuffer(size)
            self.lock = threading.RLock()  # the engines share the stream and the activation memory
            for n, e in engines.items():
                self.engines[n] = TrtEngine(n, e, self.stream, self.activation, cuda_graphs, max_graphs, self.lock)
        except BaseException:
            self.close()  # a failure part-way frees what was made, newest first
            raise

    def __getitem__(self, name: str) -> TrtEngine:
        return self.engines[name]

    def close(self) -> None:
        """Free in the reverse order of creation (engines newest first, then activation memory, then the
        stream); safe to call twice and after a failed construction."""
        for e in reversed(list(self.engines.values())):
            e.close()
        self.engines.clear()
        if self.activation is not None:
            self.activation.free()
            self.activation = None
        if self.stream is not None:
            self.stream.destroy()
            self.stream = None

    def __enter__(self) -> "TrtSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
