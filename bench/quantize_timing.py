"""Per-UNet-call time of the fp32 graph and int8 variants, alternating, at one size (the speed half of
bench/quantize_sweep.py, when only timing is wanted: calibration values do not change the time, so a few
recorded calls calibrate).

    python bench/quantize_timing.py BUNDLE [--size 512] [--variants default,attention,all] [--rounds 3]
                                    [--backends ort-cpu,openvino] [--threads 0] [--json OUT.json]

Each round times one call of every (backend, graph) in turn after a warm-up call; reported: median wall
and process CPU time per call, and the load average around the runs (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from sdrt.backends.probe_feeds import component_feeds
from sdrt.quantize.calibration import record_unet_feeds
from sdrt.quantize.gate import staged_engine
from sdrt.quantize.qdq import QdqOptions, write_qdq_unet

VARIANTS = {
    "default": QdqOptions(keep=("first_conv", "last_conv")),  # the default before this timing
    "attention": QdqOptions(keep=("first_conv", "last_conv", "attention")),  # the default
    "all": QdqOptions(keep=("first_conv", "last_conv", "time_embedding", "attention")),
    "none": QdqOptions(keep=()),
}


def main() -> None:
    from sdrt.quality.runner import default_prompts
    from sdrt.runtime.pipeline import Pipeline

    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--variants", default="default,attention,all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="ort-cpu,openvino")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    reference = Pipeline.load(str(args.bundle), precision="fp32", threads=args.threads, spin=False)
    feeds = record_unet_feeds(reference, default_prompts(False, 2), 4, samplers=("euler",))
    spec = reference.bundle.manifest.component("unet", "fp32")
    probe = component_feeds("unet", spec, reference.model, args.size, args.size, batch=2)
    out: dict = {"size": args.size, "batch": 2, "rounds": args.rounds, "cpus": os.cpu_count(), "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {"fp32": args.bundle / spec.file}
        for name in args.variants.split(","):
            graphs[name] = Path(tmp) / f"{name}.onnx"
            write_qdq_unet(args.bundle / spec.file, graphs[name], feeds[:8], VARIANTS[name])
        engines = {(b, g): staged_engine(b, path, spec, args.threads, False)
                   for b in args.backends.split(",") for g, path in graphs.items()}
        samples: dict = {key: {"wall": [], "cpu": [], "load": []} for key in engines}
        for engine in engines.values():
            engine.run(probe)
        for _ in range(args.rounds):
            for key, engine in engines.items():
                w, c = time.perf_counter(), time.process_time()
                engine.run(probe)
                samples[key]["wall"].append(time.perf_counter() - w)
                samples[key]["cpu"].append(time.process_time() - c)
                samples[key]["load"].append(os.getloadavg()[0])
        for (backend, graph), s in samples.items():
            row = {"wall_ms": 1e3 * statistics.median(s["wall"]), "cpu_ms": 1e3 * statistics.median(s["cpu"]),
                   "load": [round(x, 1) for x in s["load"]]}
            out["rows"][f"{backend} {graph}"] = row
            print(f"{backend} {graph}: {row['wall_ms']:.0f} ms wall, {row['cpu_ms']:.0f} ms CPU per call, "
                  f"load {row['load']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
