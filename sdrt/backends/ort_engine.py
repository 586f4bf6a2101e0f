"""ONNX Runtime backend of `Engine`, one class for every provider (CPU, CUDA, TensorRT EP), driven through
IO binding on buffers allocated once per input-shape signature.

Why IO binding: `session.run` allocates every output and converts every input on each call; with binding the
inputs are copied into fixed buffers and the outputs land in fixed buffers, so a 50-step loop allocates
nothing after its first step. On CPU the buffers are host numpy arrays that ORT reads and writes in place.
On a GPU provider they are device OrtValues (fixed addresses, which CUDA graphs need): inputs are copied in
with `update_inplace`, outputs copied out after the run; each of the first `max_graphs` shape sets gets its
own `gpu_graph_id` run option, so each has its own captured graph (ONNX Runtime has no call to drop one, so
later shape sets run with gpu_graph_id -1, uncaptured). When the session cannot capture (some node left the
CUDA EP), it is recreated without graphs and says so.

Why the provider check: onnxruntime-gpu silently runs on CPU when CUDA or cuDNN cannot be loaded (it only
logs a warning). We compare the providers the session really uses with the ones asked for and fail when a
GPU provider was demanded and did not come up. The GPU device path is NOT RUN ON A GPU YET.

Threads: `run` holds the engine's lock (one per engine: ONNX Runtime sessions run concurrently, but the
bound buffers are shared); on a GPU provider, runs and session creation also hold the process-wide GPU lock
(gpu_lock.py: ORT's CUDA graph capture is global, so any other thread's cudaMalloc would invalidate it).
A lock was measured against per-thread buffers (docs/runtime.md, "Threads"):
on CPU the concurrent runs only split the same cores, and on a GPU per-thread buffers would need a captured
graph per thread; the lock keeps one set of buffers and one graph per shape.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..engines.profiles import ShapeRange
from ..manifest import BundleError, ComponentSpec
from .engine import IOSpec, check_against_manifest as _check_against_manifest, check_dtypes, check_feeds
from .gpu_lock import gpu_lock_for
from .provider_probe import preload_cuda_libraries
from .ort_options import (
    SessionSettings, check_providers, graph_id_for, import_onnxruntime, providers_for, resolve_backend,
    session_options,
)

log = logging.getLogger(__name__)
MAX_BINDINGS = 8  # input-shape signatures kept bound per engine beside those of captured CUDA graphs

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(double)": np.float64, "tensor(bool)": np.bool_,
}


@dataclass
class _Binding:
    """The IOBinding and buffers of one input-shape signature."""

    io: Any
    inputs: dict[str, Any] = field(default_factory=dict)  # host arrays (CPU) or device OrtValues (GPU)
    outputs: dict[str, Any] = field(default_factory=dict)  # host arrays (CPU) or device OrtValues (GPU)
    keep: list = field(default_factory=list)  # OrtValues the binding points at, kept alive with it
    last_feeds: dict[str, np.ndarray] = field(default_factory=dict)  # what each input buffer was filled from


class OrtEngine:
    """One ONNX graph in an onnxruntime InferenceSession, on the provider `settings.backend` names."""

    def __init__(self, name: str, path: str | os.PathLike, spec: ComponentSpec | None = None,
                 settings: SessionSettings = SessionSettings(), cache_dir: str | Path | None = None,
                 profiles: Sequence[Mapping[str, ShapeRange]] = (), cuda_graph: bool = True,
                 max_graphs: int = 8, initializers: Mapping[str, np.ndarray] | None = None) -> None:
        ort = import_onnxruntime()
        self._args = (spec, settings, cache_dir, profiles, cuda_graph, max_graphs)  # for with_initializers
        self._arrays = dict(initializers or {})  # LoRA: initializers replaced (see _source)
        self._keep: list = []  # OrtValues ORT reads for the session's lifetime
        self._ort = ort
        self.name = name
        self.path = str(path)
        self.backend = settings.backend
        requested = resolve_backend(settings.backend)
        self.device = "cpu" if settings.backend == "ort-cpu" else "cuda"
        self.device_id = settings.device_id
        self.cuda_graph = cuda_graph and self.device == "cuda"
        self.max_graphs = max_graphs
        if self.device == "cuda":
            preload_cuda_libraries(ort)
        if requested[0] not in ort.get_available_providers():
            check_providers(requested, [], settings.backend)  # fail now: ORT would only warn and use CPU
        if settings.backend == "ort-trt" and cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)  # the EP creates only the last folder level
        self.session = self._open(settings, cache_dir, profiles)
        self._arrays = {}  # in the session now (free the copy; adapted engines are made from the base engine)
        self._providers = list(self.session.get_providers())
        check_providers(requested, self._providers, settings.backend)
        self.inputs = {i.name: _info(i) for i in self.session.get_inputs()}
        self.outputs = {o.name: _info(o) for o in self.session.get_outputs()}
        if spec is not None:
            _check_against_manifest(name, spec, self.inputs, self.outputs)
        self._bindings: OrderedDict[tuple, _Binding] = OrderedDict()
        self._graph_ids: dict[tuple, int] = {}
        self.lock = threading.RLock()

    def _open(self, settings: SessionSettings, cache_dir: str | Path | None,
              profiles: Sequence[Mapping[str, ShapeRange]]) -> Any:
        """The session; without CUDA graphs when ORT cannot capture this model; BundleError for a bad file."""
        def make(graph: bool) -> Any:
            providers = providers_for(settings.backend, cache_dir, profiles, graph, settings.device_id)
            source, options = self._source(settings)  # reading and patching the graph: outside the lock
            with gpu_lock_for(self.device):  # no CUDA allocation while another thread captures (gpu_lock.py)
                session = self._ort.InferenceSession(source, sess_options=options,
                                                     providers=[p for p, _ in providers],
                                                     provider_options=[o for _, o in providers])
            if not isinstance(source, str) and hasattr(session, "_model_bytes"):
                # onnxruntime's Python class keeps the graph bytes it was given (to rebuild the session if
                # providers are reset, which sdrt never does): a second copy of the weights for the session's
                # life, measured +1.2 GB on a 1.2 GB UNet. The session itself holds what it needs.
                session._model_bytes = None
            return session

        try:
            return make(self.cuda_graph)
        except Exception as exc:  # onnxruntime raises several unrelated classes (Fail, InvalidGraph, ...)
            if self.cuda_graph:
                log.warning("%s: ONNX Runtime cannot capture CUDA graphs for this model (%s); running without",
                            Path(self.path).name, exc)
                self.cuda_graph = False
                try:
                    return make(False)
                except Exception as again:  # noqa: BLE001
                    exc = again
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"cannot load {self.path} into onnxruntime ({first_line[:200]}): the file is "
                              "corrupt or incomplete, re-export the model (sdrt export)") from None

    def _source(self, settings: SessionSettings) -> tuple[Any, Any]:
        """(the graph: its path, or its bytes with replaced initializers; the session options).

        Why bytes and not `SessionOptions.add_initializer`: ORT's optimizers build new initializers from the
        graph's own values (NCHWc reorders Conv weights; on CPU, fp16 weights are cast to fp32 and folded), and
        those ignore `add_initializer`'s replacements - measured: adapted sessions silently ran the base conv
        weights, and fp16 graphs all base weights. A graph whose bytes hold the new values is optimized like
        the base one. Initializers in external data go through `add_external_initializers`, which ORT injects
        before optimizing."""
        options = session_options(settings)
        if not self._arrays:
            return self.path, options
        from ..lora.onnx_initializers import OnnxInitializers  # noqa: PLC0415

        graph = OnnxInitializers(self.path)
        data, external = graph.patched(self._arrays)
        if graph.has_external_data:
            options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                             str(Path(self.path).parent.resolve()))
        if external:
            values = [self._ort.OrtValue.ortvalue_from_numpy(v) for v in external.values()]
            self._keep = [external, values]
            options.add_external_initializers(list(external), values)
        return data, options

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    def with_initializers(self, values: Mapping[str, np.ndarray], tag: str) -> "OrtEngine":
        """A second session of this graph, on the same provider, with these initializers replaced (LoRA
        switching); this engine is untouched. `tag` names the adapter set: the TensorRT EP gets its own engine
        cache folder for it, since its cache is keyed by the graph, not by replaced initializers."""
        spec, settings, cache_dir, profiles, cuda_graph, max_graphs = self._args
        cache = Path(cache_dir) / f"lora-{tag}" if cache_dir is not None else None
        return OrtEngine(self.name, self.path, spec, settings, cache, profiles, cuda_graph, max_graphs,
                         {**self._arrays, **values})

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock, gpu_lock_for(self.device):  # a GPU run may capture a graph: one at a time per process
            return self._run_locked(feeds)

    def _run_locked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = tuple(np.shape(feeds[name]) if name in feeds else None for name in self.inputs)
        binding = self._bindings.get(key)
        if binding is None or len(feeds) != len(self.inputs):
            check_feeds(self.name, self.inputs, feeds)
            self._check_dtypes(feeds)
        if binding is None:
            binding = self._bind(feeds)  # runs the first evaluation itself, to learn the output shapes
            self._bindings[key] = binding
            for old in evictable(list(self._bindings), self._graph_ids, MAX_BINDINGS):
                del self._bindings[old]  # its buffers (device memory on a GPU) go with it
            return self._results(binding)
        self._bindings.move_to_end(key)
        for name, target in binding.inputs.items():
            feed = feeds[name]
            if feed is binding.last_feeds.get(name) and isinstance(feed, np.ndarray) and not feed.flags.writeable:
                continue  # the same read-only array as last time (prompt embeddings): already in the buffer
            self._fill(target, feed, self.inputs[name].dtype)
            binding.last_feeds[name] = feed
        self._run(binding, key)
        return self._results(binding)

    def _check_dtypes(self, feeds: Mapping[str, np.ndarray]) -> None:
        check_dtypes(self.name, self.inputs, feeds)

    def _fill(self, target: Any, feed: np.ndarray, dtype: np.dtype) -> None:
        if self.device == "cpu":
            np.copyto(target, feed, casting="same_kind")
        else:
            target.update_inplace(np.ascontiguousarray(feed, dtype=dtype))

    def _run(self, binding: _Binding, key: tuple) -> None:
        if self.device == "cpu":
            self.session.run_with_iobinding(binding.io)
            return
        binding.io.synchronize_inputs()
        run_options = self._ort.RunOptions()
        if self.cuda_graph:
            run_options.add_run_config_entry("gpu_graph_id", str(graph_id_for(self._graph_ids, key, self.max_graphs)))
        self.session.run_with_iobinding(binding.io, run_options)
        binding.io.synchronize_outputs()

    def _results(self, binding: _Binding) -> dict[str, np.ndarray]:
        if self.device == "cpu":
            return binding.outputs
        return {n: v.numpy() for n, v in binding.outputs.items()}  # device -> host

    def _bind(self, feeds: Mapping[str, np.ndarray]) -> _Binding:
        """Allocate input buffers, run once with ORT-allocated outputs to learn their shapes, then bind
        those outputs (GPU) or preallocated host outputs of those shapes (CPU) for every later call."""
        ort = self._ort
        binding = _Binding(io=self.session.io_binding())
        for name, spec in self.inputs.items():
            host = np.array(feeds[name], dtype=spec.dtype, order="C", copy=True)
            if self.device == "cpu":
                value = ort.OrtValue.ortvalue_from_numpy(host)
                binding.inputs[name] = host
            else:
                value = ort.OrtValue.ortvalue_from_shape_and_type(host.shape, host.dtype.type, self.device,
                                                                  self.device_id)
                value.update_inplace(host)
                binding.inputs[name] = value
            binding.keep.append(value)
            binding.io.bind_ortvalue_input(name, value)
            binding.last_feeds[name] = feeds[name]
        for name in self.outputs:
            binding.io.bind_output(name, self.device, self.device_id)
        key = tuple(np.shape(feeds[name]) for name in self.inputs)
        self._run(binding, key)
        values = binding.io.get_outputs()
        binding.io.clear_binding_outputs()
        for name, spec, value in zip(self.outputs, self.outputs.values(), values):
            if self.device == "cpu":
                host = np.ascontiguousarray(value.numpy(), dtype=spec.dtype).copy()
                value = ort.OrtValue.ortvalue_from_numpy(host)
                binding.outputs[name] = host
            else:
                binding.outputs[name] = value  # ORT's device allocation, kept: fixed address for graph replay
            binding.keep.append(value)
            binding.io.bind_ortvalue_output(name, value)
        return binding


def evictable(keys: Sequence[tuple], graph_ids: Mapping[tuple, int], limit: int) -> list[tuple]:
    """Bindings to drop (least recently used first in `keys`) so that at most `limit` remain beside those of
    shape sets with a captured CUDA graph (graph id > 0). Those stay for the engine's life: ONNX Runtime
    replays a graph on the addresses it captured and has no call to drop one, and there are at most
    max_graphs of them. Without this bound a server's device memory grew with every shape set it saw."""
    loose = [k for k in keys if graph_ids.get(k, -1) <= 0]
    return loose[:max(len(loose) - limit, 0)]


def _info(node: Any) -> IOSpec:
    return IOSpec(node.name, np.dtype(_ORT_TYPES[node.type]), tuple(_dim(d) for d in node.shape))


def _dim(d: object) -> int | str:
    return d if isinstance(d, int) else str(d)

