"""Which engine backend serves a run: `--backend auto|trt|ort-cuda|ort-trt|ort-cpu`.

A pure function of detected facts (GpuFacts), so every branch is tested on CPU; detection itself lives in
gpu_detect.py. `auto` prefers, in order: our TensorRT engines (lowest latency, but only when they were
built for this GPU), ONNX Runtime's CUDA provider (only when a probe session really started on it:
onnxruntime-gpu lists it even without its CUDA libraries), ONNX Runtime on CPU; the reason line says
what was skipped and why. It never picks ORT's TensorRT
provider: that provider builds its engines inside session creation (minutes on a first run) and the
onnxruntime-gpu wheels on PyPI link TensorRT 10, which a TensorRT 11 install does not provide (ORT then
silently drops the provider); it is there for users who ask for it. Explicit requests never fall back:
the user asked for a GPU path, so a missing piece is an error naming it and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

BACKENDS = ("auto", "trt", "ort-cuda", "ort-trt", "ort-cpu")
CPU_EP, CUDA_EP, TRT_EP = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_EXTRA = "pip install 'sdrt[gpu]' --extra-index-url https://pypi.nvidia.com"


@dataclass(frozen=True)
class GpuFacts:
    """What this machine offers. None/empty fields say what is missing; *_reason says why."""

    gpu: str | None = None  # "NVIDIA H100 80GB HBM3 (sm90)" when an NVIDIA GPU is usable
    gpu_reason: str = "no NVIDIA GPU found"
    tensorrt: str | None = None  # importable TensorRT version
    cuda_python: bool = False  # cuda.bindings importable
    engines: str | None = None  # folder holding engines for this GPU target and every needed component
    engines_reason: str = "no TensorRT engines built for this GPU"
    ort_providers: tuple[str, ...] = (CPU_EP,)  # onnxruntime.get_available_providers()
    ort_failed: dict[str, str] = field(default_factory=dict)  # listed providers that failed to start, and why


@dataclass(frozen=True)
class BackendChoice:
    name: str  # trt | ort-cuda | ort-trt | ort-cpu
    providers: tuple[str, ...]  # ONNX Runtime providers in priority order; () for trt
    reason: str  # one line for the user: what was chosen and why

    def __str__(self) -> str:
        return f"backend {self.name}: {self.reason}"


def _trt_missing(f: GpuFacts) -> str | None:
    if f.gpu is None:
        return f.gpu_reason
    if f.tensorrt is None:
        return f"TensorRT is not installed ({GPU_EXTRA})"
    if not f.cuda_python:
        return f"cuda-python is not installed ({GPU_EXTRA})"
    if f.engines is None:
        return f"{f.engines_reason} (run sdrt build BUNDLE)"
    return None


def _ort_missing(f: GpuFacts, provider: str) -> str | None:
    if f.gpu is None:
        return f.gpu_reason
    if provider not in f.ort_providers:
        return f"this onnxruntime has no {provider} (pip uninstall onnxruntime; {GPU_EXTRA})"
    return f.ort_failed.get(provider)


def choose_backend(requested: str, facts: GpuFacts) -> BackendChoice:
    """The backend for `requested` on a machine described by `facts`; UserError when it cannot run."""
    if requested not in BACKENDS:
        raise UserError(f"unknown backend '{requested}': choose one of {', '.join(BACKENDS)}")
    if requested == "ort-cpu":
        return BackendChoice("ort-cpu", (CPU_EP,), "ONNX Runtime on CPU, as requested")
    if requested == "trt":
        missing = _trt_missing(facts)
        if missing:
            raise UserError(f"backend trt unavailable: {missing}")
        return BackendChoice("trt", (), f"TensorRT {facts.tensorrt} engines from {facts.engines} on {facts.gpu}")
    if requested in ("ort-cuda", "ort-trt"):
        ep = CUDA_EP if requested == "ort-cuda" else TRT_EP
        missing = _ort_missing(facts, ep)
        if missing:
            raise UserError(f"backend {requested} unavailable: {missing}")
        providers = (CUDA_EP, CPU_EP) if ep == CUDA_EP else (TRT_EP, CUDA_EP, CPU_EP)
        return BackendChoice(requested, providers, f"ONNX Runtime {ep} on {facts.gpu}, as requested")
    # auto
    trt_missing = _trt_missing(facts)
    if trt_missing is None:
        return BackendChoice(
            "trt", (), f"auto chose TensorRT {facts.tensorrt} engines from {facts.engines} on {facts.gpu}"
        )
    cuda_missing = _ort_missing(facts, CUDA_EP)
    if cuda_missing is None:
        return BackendChoice(
            "ort-cuda", (CUDA_EP, CPU_EP), f"auto chose ONNX Runtime CUDA on {facts.gpu}; not TensorRT: {trt_missing}"
        )
    return BackendChoice("ort-cpu", (CPU_EP,), f"auto chose ONNX Runtime on CPU: {cuda_missing}")
