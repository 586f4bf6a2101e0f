"""Thread safety's cost: 4 threads x N requests on one Pipeline, the engine lock against per-thread buffers.

The shipped design holds each engine's lock across its run (one set of bound buffers per shape). The
alternative measured here gives every thread its own bindings and no lock (ONNX Runtime sessions accept
concurrent runs), so runs of different threads overlap. Both are compared with the sequential run.

    python bench/threads.py [--bundle PATH] [--requests 6] [--steps 8] [--json bench/results/threads.json]

Without --bundle a tiny SD1 bundle is exported to a temporary folder (needs the export extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from host_overhead import tiny_bundle  # noqa: E402


def per_thread_buffers(pipe) -> None:
    """Turn every loaded ORT engine into the lock-free variant: thread-local bindings, no lock."""
    for engine in pipe._engines.values():
        local = threading.local()
        engine.lock = nullcontext()

        def bindings(self=engine, local=local):
            if not hasattr(local, "bindings"):
                from collections import OrderedDict
                local.bindings = OrderedDict()
            return local.bindings

        engine.__class__ = type("PerThreadOrtEngine", (type(engine),), {
            "_bindings": property(lambda self, get=bindings: get()), })
        engine.__dict__.pop("_bindings", None)


def run_threads(pipe, requests, threads: int) -> float:
    t0 = time.perf_counter()
    workers = [threading.Thread(target=lambda k=k: [pipe.generate(r) for r in requests[k::threads]])
               for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=6, help="per thread")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("bench/results/threads.json"))
    args = parser.parse_args()
    from sdrt.manifest import write_atomic
    from sdrt.runtime import GenerationRequest, Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or tiny_bundle(Path(tmp))
        requests = [GenerationRequest("a red cube", steps=args.steps, seed=i, width=64, height=64)
                    for i in range(4 * args.requests)]
        rows = {}
        pipe = Pipeline.load(str(bundle))
        pipe.generate(requests[0])  # warm-up: engines created, buffers bound
        t0 = time.perf_counter()
        for r in requests:
            pipe.generate(r)
        rows["sequential"] = time.perf_counter() - t0
        rows["4 threads, engine lock"] = run_threads(pipe, requests, 4)
        free = Pipeline.load(str(bundle))
        free.generate(requests[0])
        per_thread_buffers(free)
        rows["4 threads, per-thread buffers"] = run_threads(free, requests, 4)
    print(f"{'mode':32s} {'seconds':>8s} {'images/s':>9s}")
    for mode, seconds in rows.items():
        print(f"{mode:32s} {seconds:8.2f} {len(requests) / seconds:9.2f}")
    report = {"requests": len(requests), "steps": args.steps,
              "rows": [{"mode": m, "seconds": s, "images_per_s": len(requests) / s} for m, s in rows.items()]}
    write_atomic(args.json, json.dumps(report, indent=2).encode())
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
