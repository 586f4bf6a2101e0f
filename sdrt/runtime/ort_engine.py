"""ONNX Runtime backend of `Engine`: IO binding on buffers preallocated once per input-shape signature.

Why IO binding: `session.run` allocates every output and converts every input on each call; with binding the
inputs are copied into fixed buffers and the outputs land in fixed buffers, so a 50-step loop allocates
nothing after its first step. The buffers are host numpy arrays that ORT reads and writes in place. With a
GPU provider ORT copies them to and from the device itself; the pipeline's GPU backends use device-resident
buffers and CUDA graphs instead (sdrt.runtime.ort_gpu / trt_engine, opened through gpu_engines).

Why the provider check: onnxruntime-gpu silently runs on CPU when CUDA or cuDNN cannot be loaded (it only
logs a warning). We compare the providers the session really uses with the ones asked for and fail when a
GPU provider was demanded and did not come up.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..errors import UserError
from ..manifest import BundleError, ComponentSpec
from .engine import IOSpec, check_feeds

# Backend name (what users type) -> providers to request, best first.
BACKENDS: dict[str, tuple[str, ...]] = {
    "ort-cpu": ("CPUExecutionProvider",),
    "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
MAX_BINDINGS = 8  # input-shape signatures kept bound per engine (each holds its own buffers)

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(double)": np.float64, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class SessionSettings:
    """Tuning knobs for every session of a pipeline. threads=0 lets ORT pick (one per physical core)."""

    backend: str = "ort-cpu"
    threads: int = 0
    optimization: str = "all"  # disabled | basic | extended | all
    device_id: int = 0  # GPU providers only
    spin: bool = True  # idle ORT threads spin-wait for work: lowest latency on dedicated cores; turn off on a
    # shared or oversubscribed CPU, where spinning threads slow everything else (the host work of each step too)


def resolve_backend(backend: str) -> tuple[str, ...]:
    """The providers for a backend name, with a one-line error that lists the known names."""
    try:
        return BACKENDS[backend]
    except KeyError:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}") from None


def session_options(settings: SessionSettings):
    import onnxruntime as ort

    levels = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[settings.optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # UNet graphs are one long chain: no gain in parallel
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = settings.threads
    opts.enable_mem_pattern = True  # shapes are fixed per binding, so the memory plan is reused
    opts.enable_cpu_mem_arena = True
    opts.log_severity_level = 3  # errors only: fallbacks are reported by us, in one line
    if not settings.spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def provider_options(providers: tuple[str, ...], settings: SessionSettings) -> list[tuple[str, dict]]:
    chosen = []
    for name in providers:
        if name == "CUDAExecutionProvider":
            chosen.append((name, {"device_id": settings.device_id, "cudnn_conv_algo_search": "HEURISTIC",
                                  "do_copy_in_default_stream": True}))
        elif name == "TensorrtExecutionProvider":
            # fp16 flag off: the bundle's fp16 ONNX carries its own precision (strongly typed network)
            chosen.append((name, {"device_id": settings.device_id, "trt_fp16_enable": False,
                                  "trt_engine_cache_enable": True}))
        else:
            chosen.append((name, {}))
    return chosen


def check_providers(requested: tuple[str, ...], active: list[str], backend: str) -> None:
    """Fail when the first provider asked for is not the one running (the silent-CPU-fallback case)."""
    wanted = requested[0]
    if wanted in active:
        return
    import onnxruntime as ort

    available = ort.get_available_providers()
    if wanted not in available or not active:
        why = f"this onnxruntime ({ort.__version__}) has no {wanted} (it has: {', '.join(available)})"
        fix = "install onnxruntime-gpu" if wanted in GPU_PROVIDERS else "install an onnxruntime build with it"
    else:
        why = f"{wanted} failed to start (CUDA/cuDNN libraries missing or no GPU) and onnxruntime fell back to {active[0]}"
        fix = "check the CUDA install (nvidia-smi, LD_LIBRARY_PATH)"
    raise UserError(f"backend {backend} asked for {wanted} but {why}: {fix}, or use --backend ort-cpu")


@dataclass
class _Binding:
    """Host buffers and the IOBinding for one input-shape signature."""

    io: object
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # bound input buffers
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # bound output buffers
    keep: list = field(default_factory=list)  # OrtValues the binding points at, kept alive with it
    last_feeds: dict[str, np.ndarray] = field(default_factory=dict)  # what each input buffer was filled from


class OrtEngine:
    """One ONNX graph in an onnxruntime InferenceSession, driven through IO binding."""

    def __init__(self, name: str, path: str | os.PathLike, spec: ComponentSpec,
                 settings: SessionSettings = SessionSettings()) -> None:
        import onnxruntime as ort

        self.name = name
        self.path = str(path)
        requested = resolve_backend(settings.backend)
        if requested[0] not in ort.get_available_providers():
            check_providers(requested, [], settings.backend)  # fail now: ORT would only warn and use CPU
        try:
            self.session = ort.InferenceSession(self.path, sess_options=session_options(settings),
                                                providers=provider_options(requested, settings))
        except Exception as exc:  # onnxruntime raises several unrelated classes for unreadable graphs
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"cannot load {self.path} into onnxruntime ({first_line[:200]}): the file is "
                              "corrupt or incomplete, re-export the model (sdrt export)") from None
        self._providers = list(self.session.get_providers())
        check_providers(requested, self._providers, settings.backend)
        self.inputs = {i.name: IOSpec(i.name, np.dtype(_ORT_TYPES[i.type]), tuple(_dim(d) for d in i.shape))
                       for i in self.session.get_inputs()}
        self.outputs = {o.name: IOSpec(o.name, np.dtype(_ORT_TYPES[o.type]), tuple(_dim(d) for d in o.shape))
                        for o in self.session.get_outputs()}
        _check_against_manifest(name, spec, self.inputs, self.outputs)
        self._bindings: OrderedDict[tuple, _Binding] = OrderedDict()

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = tuple(np.shape(feeds[name]) if name in feeds else None for name in self.inputs)
        binding = self._bindings.get(key)
        if binding is None or len(feeds) != len(self.inputs):
            check_feeds(self.name, self.inputs, feeds)
        if binding is None:
            binding = self._bind(feeds)  # runs the first evaluation itself, to learn the output shapes
            self._bindings[key] = binding
            if len(self._bindings) > MAX_BINDINGS:
                self._bindings.popitem(last=False)
            return binding.outputs
        self._bindings.move_to_end(key)
        for name, target in binding.inputs.items():
            feed = feeds[name]
            if feed is binding.last_feeds.get(name) and isinstance(feed, np.ndarray) and not feed.flags.writeable:
                continue  # the same read-only array as last time (prompt embeddings): already in the buffer
            np.copyto(target, feed, casting="same_kind")
            binding.last_feeds[name] = feed
        self.session.run_with_iobinding(binding.io)
        return binding.outputs

    def _bind(self, feeds: Mapping[str, np.ndarray]) -> _Binding:
        """Allocate input buffers, run once with ORT-allocated outputs to learn their shapes, then bind
        preallocated outputs of those shapes for every later call (no allocation per step after that)."""
        import onnxruntime as ort

        binding = _Binding(io=self.session.io_binding())
        for name, spec in self.inputs.items():
            buffer = np.array(feeds[name], dtype=spec.dtype, order="C", copy=True)
            self._bind_buffer(binding, name, buffer, ort.OrtValue.ortvalue_from_numpy(buffer), is_input=True)
            binding.last_feeds[name] = feeds[name]
        for name in self.outputs:
            binding.io.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding.io)
        first = dict(zip(self.outputs, binding.io.copy_outputs_to_cpu()))
        binding.io.clear_binding_outputs()
        for name, spec in self.outputs.items():
            buffer = np.ascontiguousarray(first[name], dtype=spec.dtype)
            self._bind_buffer(binding, name, buffer, ort.OrtValue.ortvalue_from_numpy(buffer), is_input=False)
        return binding

    @staticmethod
    def _bind_buffer(binding: _Binding, name: str, buffer: np.ndarray, value, is_input: bool) -> None:
        """Bind an OrtValue that shares `buffer`'s memory: writing the buffer feeds ORT, ORT writes into it."""
        binding.keep.append(value)
        if is_input:
            binding.inputs[name] = buffer
            binding.io.bind_ortvalue_input(name, value)
        else:
            binding.outputs[name] = buffer
            binding.io.bind_ortvalue_output(name, value)


def _dim(d: object) -> int | str:
    return d if isinstance(d, int) else str(d)


def _check_against_manifest(name: str, spec: ComponentSpec, inputs: Mapping[str, IOSpec],
                            outputs: Mapping[str, IOSpec]) -> None:
    """The graph file must have the inputs and outputs the manifest promises: catches a swapped file."""
    for kind, want, have in (("input", spec.inputs, inputs), ("output", spec.outputs, outputs)):
        for t in want:
            if t.name not in have:
                raise BundleError(f"{name} graph has no {kind} {t.name!r} although the manifest lists it: "
                                  "the bundle is inconsistent, re-export the model (sdrt export)")
