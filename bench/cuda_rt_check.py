#!/usr/bin/env python3
"""Exercise sdrt.backends.cuda_rt alone on a GPU: needs cuda-bindings only (no TensorRT, no onnxruntime-gpu).

For a borrowed machine that has torch, cuda-bindings and CuPy but neither TensorRT nor onnxruntime-gpu:

    python bench/cuda_rt_check.py --json cuda_rt.json

Checks, each recorded as ok/failed with its error: device properties and free memory; a device allocation;
pinned host buffers; host -> device -> host copies through them on a non-blocking stream; stream capture of
a device-to-device copy into a CUDA graph, replayed after changing the source (the replay must copy the new
bytes: a graph replays its work on the memory it was captured with); freeing everything. Exit code 0 when
every check passed, 1 otherwise, 2 when no GPU or no cuda-bindings (one line).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def recordable(value: Any) -> Any:
    """What the JSON report keeps of a check's value: numbers, strings and containers of them as they are;
    a CUDA object (Stream, DeviceBuffer, HostBuffer) as its type and size, which is all a reader can use."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): recordable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [recordable(v) for v in value]
    nbytes = getattr(value, "nbytes", None)
    return type(value).__name__ + (f" of {nbytes} bytes" if isinstance(nbytes, int) else "")


def run_checks() -> dict[str, Any]:
    """Every check's outcome; the report holds only JSON values (`recordable`)."""
    from sdrt.backends import cuda_rt

    rt = cuda_rt.cudart()
    report: dict[str, Any] = {"checks": {}}

    def check(name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            value = fn()
            report["checks"][name] = {"ok": True, "value": recordable(value),
                                      "seconds": round(time.perf_counter() - started, 4)}
            return value
        except Exception as exc:  # noqa: BLE001  (every failure is recorded, the next checks still run)
            report["checks"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            return None

    check("device", lambda: dict(zip(("name", "major", "minor"), cuda_rt.device_properties(0))))
    check("mem_get_info", lambda: dict(zip(("free", "total"), cuda_rt.mem_get_info())))
    n = 1 << 20
    stream = check("stream", cuda_rt.Stream)
    a = check("device_alloc_a", lambda: cuda_rt.DeviceBuffer(n * 4))
    b = check("device_alloc_b", lambda: cuda_rt.DeviceBuffer(n * 4))
    pin_in = check("pinned_in", lambda: cuda_rt.HostBuffer(n * 4))
    pin_out = check("pinned_out", lambda: cuda_rt.HostBuffer(n * 4))
    if None in (stream, a, b, pin_in, pin_out):
        return report
    host_in, host_out = pin_in.array((n,), np.float32), pin_out.array((n,), np.float32)

    def round_trip() -> bool:
        host_in[:] = np.arange(n, dtype=np.float32)
        cuda_rt.copy_to_device(a.ptr, host_in, stream)
        cuda_rt.copy_to_host(host_out, a.ptr, stream)
        stream.synchronize()
        return bool(np.array_equal(host_out, host_in))

    check("pinned_round_trip", round_trip)

    def d2d(s: Any) -> None:
        cuda_rt.check(rt.cudaMemcpyAsync(b.ptr, a.ptr, n * 4, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, s.obj),
                      "cudaMemcpyAsync(device to device)")

    def capture_and_replay() -> bool:
        cuda_rt.begin_capture(stream)
        try:
            d2d(stream)
            graph = cuda_rt.end_capture(stream)
        except Exception:
            cuda_rt.abort_capture(stream)
            raise
        try:
            results = []
            for value in (3.0, 7.0):  # new source bytes before each replay
                host_in[:] = value
                cuda_rt.copy_to_device(a.ptr, host_in, stream)
                graph.launch(stream)
                cuda_rt.copy_to_host(host_out, b.ptr, stream)
                stream.synchronize()
                results.append(bool(np.all(host_out == value)))
            return all(results)
        finally:
            graph.destroy()

    check("graph_capture_replay", capture_and_replay)

    def free_all() -> bool:
        for buf in (a, b, pin_in, pin_out):
            buf.free()
        stream.destroy()
        return True

    check("free", free_all)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    from sdrt.backends.gpu_detect import nvidia_gpu_present
    from sdrt.errors import UserError

    if not nvidia_gpu_present():
        print("error: no NVIDIA GPU found: cuda_rt_check needs one", file=sys.stderr)
        return 2
    try:
        from sdrt.backends import cuda_rt

        cuda_rt.cudart()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run_checks()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if all(c["ok"] for c in report["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
