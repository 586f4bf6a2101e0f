"""Peak GPU memory during a run, for the benchmark: NVML when available, cudaMemGetInfo otherwise.

NVML reports this process's own usage (nvmlDeviceGetComputeRunningProcesses), so other programs on the
GPU do not inflate the figure; cudaMemGetInfo only knows device-wide used memory, so its figure is
relative to the value at start(). Sampling runs in a thread that sleeps between samples (no busy loop);
a short peak between two samples can be missed, so the figure is a lower bound at the sampling interval.
Not run on a GPU yet.
"""

from __future__ import annotations

import os
import threading
from typing import Callable


def _nvml_reader(device: int) -> Callable[[], int] | None:
    try:
        import pynvml  # noqa: PLC0415
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device)
    except Exception:  # noqa: BLE001  (pynvml raises NVMLError subclasses; any means: no NVML here)
        return None
    pid = os.getpid()

    def read() -> int:
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        return sum(int(p.usedGpuMemory or 0) for p in procs if p.pid == pid)

    return read


def _cudart_reader() -> Callable[[], int]:
    from .cuda_rt import mem_get_info  # noqa: PLC0415

    def read() -> int:
        free, total = mem_get_info()
        return total - free

    return read


class PeakVram:
    """with PeakVram() as p: ...  then p.peak_bytes and p.source ("nvml-process" or "cudaMemGetInfo")."""

    def __init__(self, device: int = 0, interval_s: float = 0.005) -> None:
        reader = _nvml_reader(device)
        self.source = "nvml-process" if reader else "cudaMemGetInfo"
        self._read = reader or _cudart_reader()
        self._interval = interval_s
        self._baseline = 0 if reader else self._read()
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, self._read() - self._baseline)
            if self._stop.wait(self._interval):
                break

    def __enter__(self) -> "PeakVram":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._read() - self._baseline)
