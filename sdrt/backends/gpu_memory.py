"""Peak GPU memory during a run, for the benchmark: NVML when available, cudaMemGetInfo otherwise.

NVML reports this process's own usage (nvmlDeviceGetComputeRunningProcesses), so other programs on the
GPU do not inflate the figure; where NVML cannot see the process (containers) and with cudaMemGetInfo,
the figure is device-wide usage relative to the value when measuring began (`source` says which). Sampling runs in a thread that sleeps between samples (no busy loop);
a short peak between two samples can be missed, so the figure is a lower bound at the sampling interval.
Not run on a GPU yet.
"""

from __future__ import annotations

import os
import threading
from typing import Callable


def _nvml_reader(device: int) -> Callable[[], tuple[int, str]] | None:
    try:
        import pynvml  # noqa: PLC0415
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        baseline = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # noqa: BLE001  (pynvml raises NVMLError subclasses; any means: no NVML here)
        return None
    pid = os.getpid()

    def read() -> tuple[int, str]:
        # In containers NVML often cannot see our PID (or reports usedGpuMemory None): then fall back to
        # device-wide usage relative to the start.
        mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == pid]
        if mine and mine[0] is not None:
            return int(mine[0]), "nvml-process"
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used) - baseline, "nvml-device-delta"

    return read


def _cudart_reader() -> Callable[[], tuple[int, str]]:
    from .cuda_rt import mem_get_info  # noqa: PLC0415

    free, total = mem_get_info()
    baseline = total - free

    def read() -> tuple[int, str]:
        free, total = mem_get_info()
        return total - free - baseline, "cudaMemGetInfo-delta"

    return read


class PeakVram:
    """with PeakVram() as p: ...  then p.peak_bytes and p.source (how it was measured)."""

    def __init__(self, device: int = 0, interval_s: float = 0.005) -> None:
        self._read = _nvml_reader(device) or _cudart_reader()
        self._interval = interval_s
        self.peak_bytes = 0
        self.source = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _take(self) -> None:
        used, self.source = self._read()
        self.peak_bytes = max(self.peak_bytes, used)

    def _sample(self) -> None:
        while True:
            self._take()
            if self._stop.wait(self._interval):
                break

    def __enter__(self) -> "PeakVram":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()
