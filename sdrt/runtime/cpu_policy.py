"""How many CPU threads a run may ask for, and whether ONNX Runtime's idle threads should spin-wait.

Spinning keeps a worker hot between ops: it saves a wake-up per op on dedicated cores, but on a busy or
shared CPU the spinning threads take the cores that the working thread (and the host work of every step)
needs. Measured on the tiny bundle with the 2-core machine at load 1.7-2.3 (docs/bench.md): spinning with
2 threads made each run 3-5x slower, while with 1 thread (nothing to spin) it changed nothing. So spinning
is the default only while the process has a core for every thread and the cores are not already busy.

Pure functions of (threads, usable cores, 1-minute load) so the rule is tested without a busy machine;
`usable_cores()` and `load_average()` read this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UserError

THREADS_PER_CORE = 4  # --threads ceiling: past a few per core ORT only adds contention (100000 hung a machine)
BUSY_LOAD_PER_CORE = 0.5  # 1-min load average per usable core from which spinning is turned off


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (containers, taskset), else the machine's count."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(os.cpu_count() or 1, 1)


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def max_threads(cores: int) -> int:
    return cores * THREADS_PER_CORE


def check_threads(threads: int, cores: int) -> None:
    """--threads: 0 lets ONNX Runtime pick; otherwise 1..4 per usable core."""
    if threads == 0 or 1 <= threads <= max_threads(cores):
        return
    raise UserError(f"--threads {threads} is out of range: use 0 (ONNX Runtime decides) or 1..{max_threads(cores)} "
                    f"({THREADS_PER_CORE} per usable core, {cores} here)")


@dataclass(frozen=True)
class SpinChoice:
    """Whether ORT threads spin-wait, and the reason, as printed by `sdrt generate` and `sdrt bench`."""

    spin: bool
    reason: str

    def __str__(self) -> str:
        return f"spin: {'on' if self.spin else 'off'} ({self.reason})"


def choose_spin(requested: bool | None, threads: int, cores: int, load: float | None) -> SpinChoice:
    """`requested` is --spin (True), --no-spin (False) or neither (None: decide from the machine).

    threads=0 counts as one thread per usable core, about what ONNX Runtime starts."""
    if requested is not None:
        return SpinChoice(requested, "--spin" if requested else "--no-spin")
    workers = threads or cores
    if workers > cores:
        return SpinChoice(False, f"{workers} threads on {cores} core{'s' if cores != 1 else ''}")
    if load is None:
        return SpinChoice(True, f"{cores} core{'s' if cores != 1 else ''}, load unknown")
    where = f"load {load:.1f} on {cores} core{'s' if cores != 1 else ''}"
    return SpinChoice(load / cores < BUSY_LOAD_PER_CORE, where)


def spin_for_this_machine(requested: bool | None, threads: int) -> SpinChoice:
    """Check --threads against this process's cores and choose spinning from its current load."""
    cores = usable_cores()
    check_threads(threads, cores)
    return choose_spin(requested, threads, cores, load_average() if requested is None else None)
