"""Build one TensorRT engine from an ONNX graph: the only module of sdrt.engines that imports TensorRT.

Supported: TensorRT 10.1 and newer (device_memory_size_v2 and set_device_memory(ptr, size), which the
runtime uses, appeared in 10.1); older versions are refused in one line. The network is created with the
STRONGLY_TYPED flag on TensorRT 10: a network without it is weakly typed and, without BuilderFlag.FP16,
runs the fp16 ONNX on fp32/TF32 kernels; on TensorRT 11 every network is strongly typed and no flag is
passed. So an fp16 engine comes from the bundle's fp16 ONNX, an int8 / fp8 UNet engine from its QDQ graph
(explicit quantization), each graph carrying its precision, and no precision flag is set.
The timing cache (per GPU target) makes rebuilds and the other components' builds fast (ORT measured
108 s -> 9.4 s); before saving we merge whatever cache is on disk now, so two builds that ran at once
do not drop each other's timings. Written to TensorRT 11's documented Python API; NOT RUN ON A GPU YET.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import UserError
from ..manifest import write_atomic
from .profiles import ShapeRange

Echo = Callable[[str], None]
GPU_EXTRA = "pip install 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com"
MIN_TENSORRT = (10, 1)


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings a user may change. opt_level: TensorRT builder optimization level 0-5 (3 is
    TensorRT's default; higher searches more tactics and builds slower; 0 ignores the timing cache).
    workspace_gb: cap on the scratch memory tactics may use (None: TensorRT's default, the whole GPU)."""

    opt_level: int = 3
    workspace_gb: float | None = None
    refittable: bool = False  # BuilderFlag.REFIT: LoRA adapters switched in by the Refitter (trt_refit.py)

    def __post_init__(self) -> None:
        if not 0 <= self.opt_level <= 5:
            raise UserError(f"--opt-level {self.opt_level} is outside TensorRT's 0-5: pick 0 (fast build) to 5")
        if self.workspace_gb is not None and self.workspace_gb <= 0:
            raise UserError(f"--workspace {self.workspace_gb} GB must be positive (for example 4)")

    def to_json(self) -> dict[str, Any]:
        return {"opt_level": self.opt_level, "workspace_gb": self.workspace_gb, "refittable": self.refittable}


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError:
        raise UserError(f"TensorRT is not installed (import tensorrt failed): {GPU_EXTRA}") from None
    check_tensorrt_version(str(getattr(trt, "__version__", "0")))
    return trt


def check_tensorrt_version(version: str) -> None:
    """One-line error for a TensorRT older than MIN_TENSORRT (or an unreadable version string)."""
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        major_minor = (0, 0)
    if major_minor < MIN_TENSORRT:
        need = ".".join(map(str, MIN_TENSORRT))
        raise UserError(f"TensorRT {version} is too old: sdrt needs TensorRT {need} or newer "
                        f"(pip install -U 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com)")


def network_flags(trt: Any) -> int:
    """create_network flags: STRONGLY_TYPED on TensorRT 10 (without it the network is weakly typed); none on 11,
    where every network is strongly typed and the flag is deprecated and ignored (so a later 11.x may drop it).
    Strongly typed is also what explicit quantization wants: the Q/DQ nodes of an int8 / fp8 graph set the
    precision, and no precision flag (BuilderFlag.FP16/INT8/FP8, gone in 11) is ever set."""
    if _major(str(getattr(trt, "__version__", "0"))) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def _progress_monitor(trt: Any, echo: Echo) -> Any:
    """An IProgressMonitor printing each top-level phase with its duration; steps are not printed (tactic
    timing has thousands). TensorRT may call it from several threads, hence the lock."""

    class Progress(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._started: dict[str, float] = {}
            self._depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                depth = 0 if parent_phase is None else self._depth.get(parent_phase, 0) + 1
                self._depth[phase_name] = depth
                self._started[phase_name] = time.perf_counter()
                if depth <= 1:
                    echo(f"{'  ' * (depth + 1)}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                depth = self._depth.pop(phase_name, 0)
                seconds = time.perf_counter() - self._started.pop(phase_name, time.perf_counter())
                if depth <= 1:
                    echo(f"{'  ' * (depth + 1)}{phase_name} done in {seconds:.1f} s")

    return Progress()


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path.name} ({errors}): re-export the model with sdrt export")
    return network, parser


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    """Merge the cache on disk now (another build may have written it) into ours, then write atomically."""
    ours = config.get_timing_cache()
    if path.is_file():
        on_disk = config.create_timing_cache(path.read_bytes())
        ours.combine(on_disk, ignore_mismatch=True)  # a cache from another device is skipped, not fatal
    write_atomic(path, bytes(ours.serialize()))


def build_engine(
    onnx_path: str | Path,
    profiles: Sequence[Mapping[str, ShapeRange]],
    options: BuildOptions,
    timing_cache: str | Path | None,
    echo: Echo = print,
) -> memoryview:
    """Serialized plan for `onnx_path` with one optimization profile per entry of `profiles` (a view of
    TensorRT's IHostMemory, not a copy: UNet plans are gigabytes)."""
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.builder_optimization_level = options.opt_level
    if options.refittable:  # weights may be replaced after the build (strongly typed: in their own types)
        config.set_flag(trt.BuilderFlag.REFIT)
    if options.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    for i, profile in enumerate(profiles):
        p = builder.create_optimization_profile()
        for name, r in profile.items():
            try:
                p.set_shape(name, r.min, r.opt, r.max)
            except (RuntimeError, ValueError, TypeError) as exc:  # TensorRT raises on inconsistent shapes
                raise UserError(f"TensorRT rejected profile {i} for {onnx_path.name}: {name} min {r.min} opt {r.opt} "
                                f"max {r.max} ({str(exc).strip().splitlines()[0] if str(exc).strip() else 'invalid'}): "
                                "check the --profile values") from None
        if config.add_optimization_profile(p) < 0:
            raise UserError(f"TensorRT rejected profile {i} for {onnx_path.name}: check the --profile values")
    timing = _load_timing_cache(config, cache_path)  # held until the build is done
    monitor = _progress_monitor(trt, echo)
    config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(
            f"TensorRT failed to build {onnx_path.name} (see its log above; out of GPU memory? "
            "try a narrower --profile, a smaller --workspace or --opt-level 2)"
        )
    if cache_path is not None:
        _save_timing_cache(config, cache_path)
    del timing, parser, network
    return memoryview(plan)
