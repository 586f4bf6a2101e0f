"""`--backend auto` on a machine without a usable GPU: the fastest CPU backend, by measurement.

Which CPU backend wins depends on the model and the size (issue 16: OpenVINO f32 1.23x faster than ONNX
Runtime on a mid UNet at 512x512, 0.94x on a tiny one), so no rule picks it; one UNet call per backend at
the requested shape does. Each backend gets one untimed call (OpenVINO prepares its kernels for a new
shape on the first inference) and one timed call. The decision is stored (decision_cache) under a key of
everything that could change it: the UNet graph's content hash, the UNet input shape, the thread setting,
the CPU and the library versions; so it is measured once, and re-measured when any of those change.

The exact backends (ONNX Runtime and OpenVINO f32 agree within 1e-6 relative) compete unless the caller asked
for int8. OpenVINO bf16 competes too when the caller allows it (auto on a CPU with native bf16, precision not
forced): it is a different result, so the caller uses it only when it also passes the quality gate
(sdrt.runtime.bf16_choice), and otherwise falls back to the fastest exact backend
(`CpuDecision.fastest_exact`). A bundle's int8 UNet (sdrt quantize, which only writes one that passed the
gate) competes on both backends when the precision is not forced, and alone when int8 was asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .decision_cache import cpu_model, read_record, record_path, write_record
from .engine import Engine, run_engine
from .openvino_engine import OPENVINO_MISSING, openvino_available

NAMES = {"ort-cpu": "ONNX Runtime", "openvino": "OpenVINO f32", "openvino-bf16": "OpenVINO bf16",
         "ort-cpu-int8": "ONNX Runtime int8", "openvino-int8": "OpenVINO int8"}
EXACT = ("ort-cpu", "openvino")


@dataclass
class CpuDecision:
    backend: str  # ort-cpu | openvino | openvino-bf16 (the fastest measured)
    seconds: dict[str, float]  # backend -> one UNet call (empty when nothing was measured)
    shape: tuple[int, ...]  # the UNet sample shape measured at
    measured_now: bool  # False: read from the cache file
    record: Path | None  # the cache file, when there is one
    note: str = ""  # why only one backend took part
    engines: dict[str, Engine] = field(default_factory=dict)  # the winner's UNet engine, when measured now

    def fastest_exact(self) -> str:
        exact = {b: s for b, s in self.seconds.items() if b in EXACT}
        return min(exact, key=exact.__getitem__) if exact else "ort-cpu"

    def line(self, threads: int) -> str:
        """What auto chose and why, one line (the CLI prints it; the log records it)."""
        if not self.seconds:
            return f"backend {self.backend}: auto chose {NAMES[self.backend]} on CPU ({self.note})"
        which = "the faster exact backend" if set(self.seconds) <= set(EXACT) else "the fastest backend"
        return f"backend {self.backend}: auto chose {NAMES[self.backend]} on CPU, {which} for {self.race(threads)}"

    def race(self, threads: int) -> str:
        """The measurement: shape, threads, each backend's time, and where it came from."""
        timings = ", ".join(f"{NAMES[b]} {s:.3f} s" for b, s in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        source = "measured now" if self.measured_now else f"measured before, {self.record}"
        shape = "x".join(map(str, self.shape))
        return f"one UNet call at {shape}, threads {threads or 'auto'}: {timings} ({source})"


def versions() -> dict[str, str]:
    from .ort_options import import_onnxruntime  # noqa: PLC0415  (its one-line error when missing)

    found = {"onnxruntime": import_onnxruntime().__version__}
    if openvino_available():
        import openvino  # noqa: PLC0415

        found["openvino"] = openvino.__version__
    return found


def decision_key(unet_hash: str, shape: tuple[int, ...], threads: int, candidates: tuple[str, ...] = EXACT) -> dict:
    key = {"check": "cpu-backend", "unet": unet_hash, "shape": list(shape), "threads": threads,
           "cpu": cpu_model(), "versions": versions()}
    if candidates != EXACT:
        key["candidates"] = list(candidates)
    return key


def choose_cpu_backend(unet_hash: str, feeds: Mapping[str, np.ndarray], threads: int,
                       make_unet: Callable[[str], Engine], folder: str | Path,
                       candidates: tuple[str, ...] = EXACT) -> CpuDecision:
    """Read the stored decision for this key, or measure one UNet call per available candidate (names as in
    NAMES: the exact backends, OpenVINO bf16, the int8 UNet on either) and store it. `make_unet(candidate)`
    opens the UNet that way; the winner's engine comes back for reuse. `unet_hash` must cover every UNet graph
    the candidates open."""
    shape = tuple(np.shape(feeds["sample"]))
    if not openvino_available():
        candidates = tuple(c for c in candidates if not c.startswith("openvino"))
    if len(candidates) == 1:
        note = OPENVINO_MISSING.replace(": pip", "; pip") if not openvino_available() else "the only candidate"
        return CpuDecision(candidates[0], {}, shape, True, None, note=note)
    key = decision_key(unet_hash, shape, threads, candidates)
    record = read_record(folder, key)
    if record is not None:
        return CpuDecision(record["backend"], dict(record["seconds"]), shape, False, record_path(folder, key))
    seconds: dict[str, float] = {}
    engines: dict[str, Engine] = {}
    for backend in candidates:
        engine = make_unet(backend)
        run_engine(engine, feeds)  # untimed: first-call preparation
        start = time.perf_counter()
        run_engine(engine, feeds)
        seconds[backend] = time.perf_counter() - start
        best = min(seconds, key=seconds.__getitem__)
        engines = {best: engines.get(best, engine)}  # keep only the fastest so far: UNets are large
    winner = min(seconds, key=seconds.__getitem__)
    path = write_record(folder, key, {"backend": winner, "seconds": seconds,
                                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return CpuDecision(winner, seconds, shape, True, path, engines=engines)
