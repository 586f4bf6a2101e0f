"""Whether a component's fp32 graph ships with its attention fused (fusion.py), decided per model by timing
the fused and the unfused graph on ONNX Runtime CPU at export (`sdrt export` without --fuse / --no-fuse).

Why measure: MultiHeadAttention's CPU kernel pays off on large attention (a UNet with SD 1.5's widths at
512x512: ~6 % faster) but costs on small heads (the tiny test UNet: ~10 % slower), docs/bench.md "Profile";
no rule on shapes covers both, and the export has both graphs in hand anyway.

What is timed: process CPU time per call (`time.process_time`, every ONNX Runtime thread of this process), not
wall time. Spin-waiting is off in these sessions, so idle threads sleep and CPU time counts the work alone;
wall time on a shared machine mostly measures the other jobs (docs/bench.md: one process got ~30 % of a core
at load 8-10), and the choice would follow the neighbours. What CPU time does not see is how well each graph
parallelises: both run with ONNX Runtime's default threads, and a graph faster only in wall time (same work,
better spread over the cores) is not preferred.

Bounded: one warm-up call each, then alternating calls (fused, unfused, unfused, fused, ...), the median of
each: CALLS each, and on fast graphs more (up to MAX_CALLS each, while the timed calls took under BUDGET_S
wall seconds), since a millisecond call's median of 3 is mostly noise. A full-size UNet pays 1 + 3 calls per
graph. Inputs: the accuracy gate's first case (the model's default size, batch 1).

The unfused graph is kept only when its median is more than MARGIN lower; a near-tie keeps the fused graph.
Why that way round: the measurement is at one size, the model's default, and fusion's advantage grows with
the number of attention tokens, in time and in memory (the unfused graph writes every score matrix out):
measured on bench/compare.py's mid model, exported at its 128-pixel default where the two tied (UNet 180.7 vs
182.8 ms, 1 %), then run at 512x512: unfused 2.51 s per UNet call and 5.2 GiB peak RSS, fused 2.37 s and
3.1 GiB (docs/bench.md). ~2 % is about what two alternating medians resolve.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

CALLS = 3  # timed calls per graph after its warm-up, at least
MAX_CALLS = 15  # at most, for graphs whose calls are short (BUDGET_S)
BUDGET_S = 0.5  # wall seconds of timed calls after which no call beyond CALLS starts

# (fused graph, unfused graph, feeds) -> (fused seconds per call, unfused seconds per call)
Timer = Callable[[Path, Path, dict[str, Any]], tuple[Sequence[float], Sequence[float]]]

MARGIN = 0.02  # the unfused graph's median must be this much (relative) below the fused one's
MODES = {None: "auto", True: "on", False: "off"}  # ExportOptions.fuse -> the manifest's mode


def choose(fused_s: Sequence[float], unfused_s: Sequence[float]) -> bool:
    """True: keep the fused graph (unless the unfused graph's median call is faster by more than MARGIN)."""
    return not statistics.median(unfused_s) < (1 - MARGIN) * statistics.median(fused_s)


def time_both(fused: Path, unfused: Path, feeds: dict[str, Any], calls: int = CALLS, max_calls: int = MAX_CALLS,
              budget_s: float = BUDGET_S) -> tuple[list[float], list[float]]:
    """Process CPU seconds per call of each graph, alternating (see the module docstring)."""
    sessions = {"fused": _session(fused), "unfused": _session(unfused)}
    for session in sessions.values():
        session.run(None, feeds)  # warm-up: first-call allocations and kernel selection
    times: dict[str, list[float]] = {k: [] for k in sessions}
    started = time.perf_counter()
    for call in range(max(calls, max_calls)):
        if call >= calls and time.perf_counter() - started >= budget_s:
            break
        for key in (("fused", "unfused") if call % 2 == 0 else ("unfused", "fused")):
            start = time.process_time()
            sessions[key].run(None, feeds)
            times[key].append(time.process_time() - start)
    return times["fused"], times["unfused"]


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def record(fuse: bool | None, kept_fused: bool, fused_s: Sequence[float] | None = None,
           unfused_s: Sequence[float] | None = None) -> dict[str, Any]:
    """The manifest's `fusion_choice` of one graph (export.graphs.<name>); milliseconds only when measured."""
    entry: dict[str, Any] = {"mode": MODES[fuse], "kept": "fused" if kept_fused else "unfused"}
    if fused_s is not None and unfused_s is not None:
        entry.update(fused_ms=_ms(fused_s), unfused_ms=_ms(unfused_s), calls=len(fused_s),
                     clock="process CPU time, median")
    return entry


def describe(fused_s: Sequence[float], unfused_s: Sequence[float], kept_fused: bool) -> str:
    return (f"attention fusion measured: fused {_ms(fused_s):.2f} ms, unfused {_ms(unfused_s):.2f} ms per call "
            f"(CPU time, median of {len(fused_s)}) -> {'fused' if kept_fused else 'unfused'} kept")


def _ms(seconds: Sequence[float]) -> float:
    return round(statistics.median(seconds) * 1e3, 3)
