"""Peak memory of this process: resident set (CPU) from the OS, VRAM from sdrt.backends.gpu_memory."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


def peak_rss_bytes() -> int | None:
    """Highest resident set size of this process so far (its whole life: loading included)."""
    try:
        import resource  # noqa: PLC0415  (POSIX only)
    except ImportError:
        resource = None
    if resource is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports KiB
    try:
        import psutil  # noqa: PLC0415
    except ImportError:
        return None
    info = psutil.Process().memory_info()
    return int(getattr(info, "peak_wset", info.rss))


def current_rss_bytes() -> int:
    """Resident set size now (for growth over many runs); reads /proc where there is one."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os  # noqa: PLC0415

        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil  # noqa: PLC0415

        return int(psutil.Process().memory_info().rss)


class VramProbe:
    """Peak VRAM over a block when the engines run on a GPU; otherwise it says why there is no figure."""

    def __init__(self, on_gpu: bool) -> None:
        self.on_gpu = on_gpu
        self.peak_bytes: int | None = None
        self.source = "n/a (CPU)" if not on_gpu else ""

    @contextmanager
    def measure(self) -> Iterator["VramProbe"]:
        if not self.on_gpu:
            yield self
            return
        from ..backends.gpu_memory import PeakVram  # noqa: PLC0415  (needs NVML or the CUDA runtime)

        with PeakVram() as peak:
            yield self
        self.peak_bytes, self.source = peak.peak_bytes, peak.source
