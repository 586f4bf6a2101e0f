"""ONNX Runtime on the GPU: CUDA and TensorRT execution providers, IO binding on device memory, CUDA graphs.

Provider options are built by pure functions (tested on CPU); `OrtGpuEngine` is the thin GPU part.

CUDA graphs in ONNX Runtime need every node on the CUDA EP, fixed shapes and fixed input/output addresses.
We keep one set of device OrtValues per distinct input-shape set (fixed addresses), and give each of the
first `max_graphs` shape sets its own `gpu_graph_id` run option, so each shape set gets its own captured
graph; ONNX Runtime has no call to drop a captured graph, so shape sets beyond the bound run with
gpu_graph_id -1 (no capture) rather than evicting. When the session cannot capture (some node left the
CUDA EP), it is recreated without graphs and says so.

Written to onnxruntime-gpu 1.31's documented API; NOT RUN ON A GPU YET.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..engines.profiles import ShapeRange
from ..errors import UserError
from .backend_choice import CPU_EP, CUDA_EP, TRT_EP
from .engine import IOSpec
from .graph_cache import ShapeKey, shape_key

log = logging.getLogger(__name__)


ORT_DTYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def cuda_provider_options(device_id: int = 0, cuda_graph: bool = True, gpu_mem_limit: int | None = None) -> dict[str, str]:
    opts = {
        "device_id": str(device_id),
        "enable_cuda_graph": "1" if cuda_graph else "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",  # tuned once per shape; pays off over a denoising loop
        "do_copy_in_default_stream": "1",
    }
    if gpu_mem_limit is not None:
        opts["gpu_mem_limit"] = str(gpu_mem_limit)
    return opts


def envelope(profiles: Sequence[Mapping[str, ShapeRange]]) -> dict[str, ShapeRange]:
    """One profile covering all: min of mins, max of maxes, the first profile's opt.

    ORT's TensorRT EP gets this single profile: whether its option strings accept several profiles per
    input is unconfirmed, and one engine covering the user's range is what ORT builds anyway."""
    if not profiles:
        raise ValueError("need at least one profile")
    out = {}
    for name, first in profiles[0].items():
        rs = [p[name] for p in profiles]
        out[name] = ShapeRange(
            tuple(min(d) for d in zip(*(r.min for r in rs))),
            first.opt,
            tuple(max(d) for d in zip(*(r.max for r in rs))),
        )
    return out


def trt_profile_strings(profile: Mapping[str, ShapeRange]) -> tuple[str, str, str]:
    """`trt_profile_min_shapes` / `_opt_` / `_max_` values: "in1:1x4x64x64,in2:1" (inputs sorted)."""
    def fmt(which: str) -> str:
        return ",".join(f"{n}:{'x'.join(str(d) for d in getattr(r, which))}" for n, r in sorted(profile.items()))

    return fmt("min"), fmt("opt"), fmt("max")


def trt_provider_options(
    cache_dir: str | Path,
    profiles: Sequence[Mapping[str, ShapeRange]] = (),
    device_id: int = 0,
    cuda_graph: bool = True,
    opt_level: int = 3,
    workspace_bytes: int | None = None,
) -> dict[str, str]:
    """TensorRT EP options: engine and timing caches on disk, explicit profiles, strongly typed fp16.

    trt_fp16_enable stays off: the bundle's fp16 ONNX already carries its precision, and with the flag off
    the EP builds a strongly typed network that obeys it (ORT PR #24298)."""
    opts = {
        "device_id": str(device_id),
        "trt_fp16_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_cuda_graph_enable": "True" if cuda_graph else "False",
        "trt_builder_optimization_level": str(opt_level),
    }
    if workspace_bytes is not None:
        opts["trt_max_workspace_size"] = str(workspace_bytes)
    if profiles:
        lo, opt, hi = trt_profile_strings(envelope(profiles))
        opts.update(trt_profile_min_shapes=lo, trt_profile_opt_shapes=opt, trt_profile_max_shapes=hi)
    return opts


def providers_for(
    backend: str,
    cache_dir: str | Path | None = None,
    profiles: Sequence[Mapping[str, ShapeRange]] = (),
    cuda_graph: bool = True,
    device_id: int = 0,
) -> list[tuple[str, dict[str, str]]]:
    """(provider, options) list, highest priority first. `ort-cpu` is accepted so the IO-binding logic of
    OrtGpuEngine can be exercised on machines without a GPU."""
    if backend == "ort-cpu":
        return [(CPU_EP, {})]
    cuda = (CUDA_EP, cuda_provider_options(device_id, cuda_graph and backend == "ort-cuda"))
    if backend == "ort-cuda":
        return [cuda, (CPU_EP, {})]
    if backend == "ort-trt":
        if cache_dir is None:
            raise ValueError("ort-trt needs a cache_dir for its engines")
        return [(TRT_EP, trt_provider_options(cache_dir, profiles, device_id, cuda_graph)), cuda, (CPU_EP, {})]
    raise ValueError(f"not an ONNX Runtime backend: {backend}")


def graph_id_for(known: dict[ShapeKey, int], key: ShapeKey, max_graphs: int) -> int:
    """gpu_graph_id of a shape set: a new id for each of the first max_graphs sets, -1 (no capture) after.

    Ids start at 1; ORT's default graph id 0 is left unused so an unkeyed run can never replay it."""
    if key in known:
        return known[key]
    gid = len(known) + 1 if len(known) < max_graphs else -1
    known[key] = gid
    return gid


class OrtGpuEngine:
    """One ONNX graph on ORT's CUDA or TensorRT EP with device IO binding. run(feeds) -> host outputs.

    backend "ort-cpu" runs the same binding logic on host memory without graphs (for CPU tests)."""

    def __init__(
        self,
        onnx_path: str | Path,
        backend: str,
        cache_dir: str | Path | None = None,
        name: str | None = None,
        profiles: Sequence[Mapping[str, ShapeRange]] = (),
        cuda_graph: bool = True,
        max_graphs: int = 8,
        device_id: int = 0,
    ) -> None:
        import onnxruntime as ort  # noqa: PLC0415

        self._ort = ort
        self.path, self.backend, self.device_id = Path(onnx_path), backend, device_id
        self.name = name or self.path.stem
        self.max_graphs = max_graphs
        wanted = {"ort-trt": TRT_EP, "ort-cuda": CUDA_EP}.get(backend, CPU_EP)
        self.device = "cpu" if backend == "ort-cpu" else "cuda"
        cuda_graph = cuda_graph and self.device == "cuda"
        self.cuda_graph = cuda_graph
        try:
            self.session = self._make_session(providers_for(backend, cache_dir, profiles, cuda_graph, device_id))
        except Exception as exc:  # noqa: BLE001  (ORT raises its own Fail/RuntimeException types)
            if not cuda_graph:
                raise
            log.warning("%s: ONNX Runtime cannot capture CUDA graphs for this model (%s); running without",
                        self.path.name, exc)
            self.cuda_graph = False
            self.session = self._make_session(providers_for(backend, cache_dir, profiles, False, device_id))
        active = self.session.get_providers()
        if wanted not in active:
            raise UserError(
                f"ONNX Runtime fell back from {wanted} to {', '.join(active)} for {self.path.name} "
                "(a CUDA, cuDNN or TensorRT library is missing or mismatched): fix the install or use --backend ort-cpu"
            )
        self.inputs = {i.name: _info(i) for i in self.session.get_inputs()}
        self.outputs = {o.name: _info(o) for o in self.session.get_outputs()}
        self.output_names = list(self.outputs)
        self._bindings: dict[ShapeKey, tuple[Any, dict[str, Any], dict[str, Any]]] = {}
        self._graph_ids: dict[ShapeKey, int] = {}

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _make_session(self, providers: list[tuple[str, dict[str, str]]]) -> Any:
        so = self._ort.SessionOptions()
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return self._ort.InferenceSession(
            str(self.path), sess_options=so,
            providers=[p for p, _ in providers], provider_options=[o for _, o in providers],
        )

    def _binding_for(self, key: ShapeKey, arrays: Mapping[str, np.ndarray]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """Device OrtValues for one shape set, allocated on first use and kept (fixed addresses)."""
        if key in self._bindings:
            return self._bindings[key]
        ort = self._ort
        binding = self.session.io_binding()
        ins = {}
        for n, a in arrays.items():
            ins[n] = ort.OrtValue.ortvalue_from_shape_and_type(a.shape, a.dtype.type, self.device, self.device_id)
            binding.bind_ortvalue_input(n, ins[n])
        # Output shapes are only known after a run: the first run lets ORT allocate them on the device,
        # and later runs of this shape set reuse those OrtValues (fixed addresses for graph replay).
        for n in self.output_names:
            binding.bind_output(n, self.device, self.device_id)
        entry = (binding, ins, {})
        self._bindings[key] = entry
        return entry

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(feeds) != set(self.inputs):
            raise UserError(f"{self.path.name} takes inputs {sorted(self.inputs)}, got {sorted(feeds)}")
        arrays = {}
        for n, value in feeds.items():
            value, want = np.asarray(value), self.inputs[n].dtype
            if value.dtype != want and not np.can_cast(value.dtype, want, "same_kind"):
                raise UserError(f"{self.path.name} input {n} must be {want}, got {value.dtype}")
            arrays[n] = np.ascontiguousarray(value, dtype=want)
        key = shape_key({n: a.shape for n, a in arrays.items()})
        binding, ins, outs = self._binding_for(key, arrays)
        for n, a in arrays.items():
            ins[n].update_inplace(a)
        binding.synchronize_inputs()
        run_options = self._ort.RunOptions()
        if self.cuda_graph:
            run_options.add_run_config_entry("gpu_graph_id", str(graph_id_for(self._graph_ids, key, self.max_graphs)))
        self.session.run_with_iobinding(binding, run_options)
        binding.synchronize_outputs()
        if not outs:
            values = binding.get_outputs()
            for n, v in zip(self.output_names, values):
                outs[n] = v
                binding.bind_ortvalue_output(n, v)
        if self.device == "cpu":  # a host OrtValue's numpy() is a view of memory the next run overwrites
            return {n: outs[n].numpy().copy() for n in self.output_names}
        return {n: outs[n].numpy() for n in self.output_names}  # device -> new host array


def _info(node: Any) -> IOSpec:
    return IOSpec(node.name, np.dtype(ORT_DTYPES[node.type]),
                      tuple(d if isinstance(d, int) else str(d) for d in node.shape))
