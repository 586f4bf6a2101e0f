"""One benchmark session: warm-up runs (discarded: first-call allocations, ORT's lazy initialisation), then
timed runs, with peak memory taken over the timed runs."""

from __future__ import annotations

from typing import Any, Callable

from ..backends.openvino_engine import PROVIDER as OPENVINO_CPU
from ..runtime.request import GenerationRequest
from .memory import VramProbe, peak_rss_bytes
from .stats import Report, RunRecord, summarize
from .timing import TimedPipeline, measure_run

RunDone = Callable[[str, int, RunRecord], None]  # ("warm-up" | "run", index from 1, record)


def run_benchmark(pipe: TimedPipeline, request: GenerationRequest, runs: int, warmup: int,
                  settings: dict[str, Any], on_run: RunDone | None = None) -> Report:
    pipe.check(request)  # every user error and every engine load before the clock starts
    for i in range(warmup):
        record = measure_run(pipe, request)
        if on_run is not None:
            on_run("warm-up", i + 1, record)
    # Anything but the CPU backends (ORT's CPU provider, OpenVINO's CPU device) runs on the GPU (ORT
    # CUDA/TensorRT EPs, sdrt's own TensorRT engines).
    on_gpu = any(p and p[0] != "CPUExecutionProvider" and not p[0].startswith(OPENVINO_CPU)
                 for p in pipe.providers.values())
    probe = VramProbe(on_gpu)
    records: list[RunRecord] = []
    with probe.measure():
        for i in range(runs):
            records.append(measure_run(pipe, request))
            if on_run is not None:
                on_run("run", i + 1, records[-1])
    settings = {**settings, "providers": {name: list(p) for name, p in sorted(pipe.providers.items())}}
    return summarize(records, settings, request.batch, peak_rss_bytes(), probe.peak_bytes, probe.source)
