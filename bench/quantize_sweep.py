"""What `sdrt quantize --int8` should keep in fp32, measured by the gate, and what int8 buys per UNet call.

    python bench/quantize_sweep.py BUNDLE [--variants default,none,...] [--steps 20] [--gate-steps 20]
                                   [--calls 10] [--time-size PX] [--json OUT.json]

Records the calibration feeds once (sdrt.quantize.calibration, the same trajectories `sdrt quantize` uses),
then per variant writes the QDQ graph (sdrt.quantize.qdq.write_qdq_unet), runs the gate on ORT CPU and
OpenVINO (sdrt.quantize.gate.gate_int8: sdrt.quality's compare_pipelines + verdict) and times UNet calls of
the fp32 and the int8 graph on each backend at the bundle's default size, CFG batch 2 (median wall time and
process CPU time per call, over --calls calls after one warm-up). The machine may be shared: the load average
is recorded beside each timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from sdrt.quantize.calibration import record_unet_feeds
from sdrt.quantize.gate import ReferenceImages, gate_int8, staged_engine
from sdrt.quantize.qdq import QdqOptions, write_qdq_unet
from sdrt.quantize.run import MAX_CALIBRATION_FEEDS, spaced

VARIANTS = {
    "none": QdqOptions(keep=()),
    "default": QdqOptions(keep=("first_conv", "last_conv")),  # the default before the mid512 timing
    "time": QdqOptions(keep=("first_conv", "last_conv", "time_embedding")),
    "attention": QdqOptions(keep=("first_conv", "last_conv", "attention")),
    "all": QdqOptions(keep=("first_conv", "last_conv", "time_embedding", "attention")),
    "s8": QdqOptions(keep=("first_conv", "last_conv"), activation_type="int8", activation_symmetric=True),
    "percentile": QdqOptions(keep=("first_conv", "last_conv"), calibration="percentile"),
}


def per_call(engine, feed, calls: int) -> dict:
    engine.run(feed)
    wall, cpu = [], []
    for _ in range(calls):
        w, c = time.perf_counter(), time.process_time()
        engine.run(feed)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu),
            "load": os.getloadavg()[0]}


def main() -> None:
    from sdrt.quality.runner import default_prompts
    from sdrt.runtime.gate_requests import default_requests
    from sdrt.runtime.pipeline import Pipeline
    from sdrt.tinymodel.builtin import DEFAULT_CFG
    from sdrt.tinymodel.cell_score import is_builtin

    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--variants", default="none,default,time,all,s8")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gate-steps", type=int, default=20)
    parser.add_argument("--gate-prompts", type=int, default=4)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--backends", default="ort-cpu,openvino")
    parser.add_argument("--time-size", type=int, default=None,
                        help="time UNet calls at this side in pixels (synthetic feeds), not a recorded call")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    backends = args.backends.split(",")
    reference = Pipeline.load(str(args.bundle), precision="fp32", threads=args.threads, spin=False)
    builtin = is_builtin(reference.model)
    cfg = DEFAULT_CFG if builtin else 7.5
    t0 = time.perf_counter()
    feeds = record_unet_feeds(reference, default_prompts(builtin, 4), args.steps, cfg=cfg)
    print(f"recorded {len(feeds)} UNet calls in {time.perf_counter() - t0:.0f} s", flush=True)
    used = spaced(feeds, MAX_CALIBRATION_FEEDS)
    requests = default_requests(reference, steps=args.gate_steps, prompt_count=args.gate_prompts, cfg=cfg)
    spec = reference.bundle.manifest.component("unet", "fp32")
    fp32_graph = args.bundle / spec.file
    probe = feeds[len(feeds) // 2]
    if args.time_size:
        from sdrt.backends.probe_feeds import component_feeds

        probe = component_feeds("unet", spec, reference.model, args.time_size, args.time_size, batch=2)
    results: dict = {"bundle": str(args.bundle), "size": reference.model.default_size,
                     "time_size": args.time_size, "cpus": os.cpu_count(),
                     "fp32": {}, "variants": {}}
    for backend in backends:
        results["fp32"][backend] = per_call(staged_engine(backend, fp32_graph, spec, args.threads, False), probe,
                                            args.calls)
        print(f"fp32 {backend}: {results['fp32'][backend]}", flush=True)
    exact = ReferenceImages(reference)  # the fp32 images, generated once for every variant and backend
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            options = VARIANTS[name]
            graph = Path(tmp) / name / "unet.onnx"
            graph.parent.mkdir()
            t0 = time.perf_counter()
            result = write_qdq_unet(fp32_graph, graph, used, options)
            row = {"options": options.as_dict(), "quantize_s": time.perf_counter() - t0,
                   "kept_nodes": {k: len(v) for k, v in result.kept_nodes.items()},
                   "quantized_nodes": result.quantized_nodes, "backends": {}}
            figures = gate_int8(args.bundle, exact, graph, spec, backends, requests, args.threads, False)
            for f in figures:
                timing = per_call(staged_engine(f.backend, graph, spec, args.threads, False), probe, args.calls)
                row["backends"][f.backend] = {**f.as_dict(), **timing,
                                              "speedup": results["fp32"][f.backend]["wall_ms"] / timing["wall_ms"]}
                print(f"{name} {f.line()} {'passed' if f.verdict.passed else 'FAILED'}; "
                      f"{timing['wall_ms']:.1f} ms/call wall, {timing['cpu_ms']:.1f} ms CPU (fp32 "
                      f"{results['fp32'][f.backend]['wall_ms']:.1f}), load {timing['load']:.1f}", flush=True)
            results["variants"][name] = row
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
