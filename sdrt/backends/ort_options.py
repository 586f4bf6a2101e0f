"""ONNX Runtime settings as pure functions: session options, provider options, CUDA graph ids.

Kept apart from the engine class so every option string is tested on CPU. Written to onnxruntime-gpu
1.31's documented API (see docs/gpu.md for the sources); the GPU parts are NOT RUN ON A GPU YET.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..engines.profiles import ShapeRange
from ..errors import UserError
from .backend_choice import CPU_EP, CUDA_EP, TRT_EP

# Backend name (what users type) -> providers to request, best first.
BACKENDS: dict[str, tuple[str, ...]] = {
    "ort-cpu": (CPU_EP,),
    "ort-cuda": (CUDA_EP, CPU_EP),
    "ort-trt": (TRT_EP, CUDA_EP, CPU_EP),
}
GPU_PROVIDERS = (CUDA_EP, TRT_EP)
ORT_MISSING = ("ONNX Runtime is not installed (import onnxruntime failed): pip install 'sdrt[cpu]', "
               "or 'sdrt[gpu]' on an NVIDIA GPU machine (never both)")


def import_onnxruntime() -> Any:
    """onnxruntime, or the one-line error naming the extras: the base install brings no ONNX Runtime
    flavour, because onnxruntime and onnxruntime-gpu write the same package folder."""
    try:
        import onnxruntime  # noqa: PLC0415
    except ImportError:
        raise UserError(ORT_MISSING) from None
    return onnxruntime


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


def session_options(settings: SessionSettings) -> Any:
    ort = import_onnxruntime()
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
    else:
        # Spin within a run, sleep after it. Every session has its own thread pool, and a pipeline runs several
        # in turn (text encoder, UNet per step, VAE): workers left spinning by the last session steal the cores
        # of the next. Measured (docs/bench.md, "Threads and spin-waiting"): tiny bundle, 2 threads, 256x256,
        # 20 steps: 138-157 ms end to end -> 92-94 ms (no spinning at all: 117-135 ms); mid model at 512x512:
        # 50.3 -> 48.9 s.
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


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

    ORT's TensorRT EP takes one min/opt/max per input (its documented option format), so it gets this
    single profile: one engine covering the user's range."""
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


def is_static(profile: Mapping[str, ShapeRange]) -> bool:
    return all(r.min == r.max for r in profile.values())


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
    the EP builds a strongly typed network that obeys it (ORT PR #24298). The EP's CUDA graph is enabled
    only for one static profile: the EP keeps one graph per session (whether it honours per-run
    `gpu_graph_id` is unconfirmed), so with several shapes it could replay a graph of another shape."""
    envelope_profile = envelope(profiles) if profiles else None
    graph = cuda_graph and envelope_profile is not None and is_static(envelope_profile)
    opts = {
        "device_id": str(device_id),
        "trt_fp16_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_cuda_graph_enable": "True" if graph else "False",
        "trt_builder_optimization_level": str(opt_level),
    }
    if workspace_bytes is not None:
        opts["trt_max_workspace_size"] = str(workspace_bytes)
    if envelope_profile is not None:
        lo, opt, hi = trt_profile_strings(envelope_profile)
        opts.update(trt_profile_min_shapes=lo, trt_profile_opt_shapes=opt, trt_profile_max_shapes=hi)
    return opts


def providers_for(
    backend: str,
    cache_dir: str | Path | None = None,
    profiles: Sequence[Mapping[str, ShapeRange]] = (),
    cuda_graph: bool = True,
    device_id: int = 0,
) -> list[tuple[str, dict[str, str]]]:
    """(provider, options) list, highest priority first."""
    resolve_backend(backend)
    if backend == "ort-cpu":
        return [(CPU_EP, {})]
    cuda = (CUDA_EP, cuda_provider_options(device_id, cuda_graph and backend == "ort-cuda"))
    if backend == "ort-cuda":
        return [cuda, (CPU_EP, {})]
    if cache_dir is None:
        raise ValueError("ort-trt needs a cache_dir for its engines")
    return [(TRT_EP, trt_provider_options(cache_dir, profiles, device_id, cuda_graph)), cuda, (CPU_EP, {})]


def graph_id_for(known: dict, key: Any, max_graphs: int) -> int:
    """gpu_graph_id of a shape set: a new id for each of the first max_graphs sets, -1 (no capture) after.

    Ids start at 1; ORT's default graph id 0 is left unused so an unkeyed run can never replay it."""
    if key in known:
        return known[key]
    gid = len(known) + 1 if len(known) < max_graphs else -1
    known[key] = gid
    return gid


def _trt_ep_missing() -> str | None:
    from .provider_probe import trt_ep_missing  # noqa: PLC0415

    return trt_ep_missing()


def check_providers(requested: tuple[str, ...], active: list[str], backend: str) -> None:
    """Fail when the first provider asked for is not the one running (the silent-CPU-fallback case)."""
    wanted = requested[0]
    if wanted in active:
        return
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if wanted not in available or not active:
        why = f"this onnxruntime ({ort.__version__}) has no {wanted} (it has: {', '.join(available)})"
        fix = "install onnxruntime-gpu" if wanted in GPU_PROVIDERS else "install an onnxruntime build with it"
    elif wanted == TRT_EP and (missing := _trt_ep_missing()):
        raise UserError(f"backend {backend} asked for {wanted} but {missing}")  # the [gpu] stack: TensorRT 11
    else:
        why = f"{wanted} failed to start (CUDA/cuDNN libraries missing or no GPU) and onnxruntime fell back to {active[0]}"
        fix = "check the CUDA install (nvidia-smi, LD_LIBRARY_PATH)"
    raise UserError(f"backend {backend} asked for {wanted} but {why}: {fix}, or use --backend ort-cpu")
