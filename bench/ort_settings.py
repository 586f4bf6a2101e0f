"""ONNX Runtime CPU session settings, measured side by side: sdrt's defaults (sdrt.backends.ort_options) vs
one change at a time, alternating calls; and whether each change keeps the output bit for bit.

    python bench/ort_settings.py --graph PATH[@SIDE[xBATCH]] ... [--rounds 5] [--threads 2] [--spin]
                                 [--json bench/results/ort_settings.json]

Each graph is a UNet (inputs sample / timestep / encoder_hidden_states) or a VAE decoder (latent), fed at
SIDE pixels (latents SIDE / 8) with BATCH rows (default 2, classifier-free guidance). Variants: the memory
arena off, the memory pattern off, denormals flushed to zero (session.set_denormal_as_zero), one thread
instead of --threads. "exact" compares each variant's output with the defaults' bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def variants(threads: int, spin: bool) -> dict:
    from sdrt.backends.ort_options import SessionSettings, session_options

    def make(change=None, n=threads):
        opts = session_options(SessionSettings(threads=n, spin=spin))
        if change:
            change(opts)
        return opts

    return {
        "sdrt defaults": lambda: make(),
        "arena off": lambda: make(lambda o: setattr(o, "enable_cpu_mem_arena", False)),
        "mem pattern off": lambda: make(lambda o: setattr(o, "enable_mem_pattern", False)),
        "denormals as zero": lambda: make(lambda o: o.add_session_config_entry("session.set_denormal_as_zero", "1")),
        "1 thread": lambda: make(n=1),
    }


def parse_graph(text: str) -> tuple[Path, int, int]:
    path, _, geometry = text.partition("@")
    side, _, batch = (geometry or "256").partition("x")
    return Path(path), int(side), int(batch or 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graph", action="append", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spin", action="store_true", help="let ORT threads spin (default off: shared machine)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ort_settings.json")
    args = parser.parse_args()
    import onnxruntime as ort

    from profile_ort import feeds_for

    rows = []
    for text in args.graph:
        path, side, batch = parse_graph(text)
        made = {name: ort.InferenceSession(str(path), make(), providers=["CPUExecutionProvider"])
                for name, make in variants(args.threads, args.spin).items()}
        feeds = feeds_for(made["sdrt defaults"], side, batch)
        outs = {name: s.run(None, feeds)[0] for name, s in made.items()}  # warm-up, and the outputs compared
        times: dict[str, list[float]] = {name: [] for name in made}
        load = os.getloadavg()[0]
        for r in range(args.rounds):
            order = list(made) if r % 2 == 0 else list(reversed(made))
            for name in order:
                t0 = time.perf_counter()
                made[name].run(None, feeds)
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["sdrt defaults"])
        for name in made:
            med = statistics.median(times[name])
            rows.append({"graph": str(path), "side": side, "batch": batch, "variant": name, "threads": args.threads,
                         "spin": args.spin, "load_avg_1min": load, "median_s": med, "min_s": min(times[name]),
                         "all_s": times[name], "speed_vs_defaults": base / med,
                         "exact": bool(np.array_equal(outs[name], outs["sdrt defaults"]))})
            r = rows[-1]
            print(f"{path.parent.parent.name}/{path.name} {side}px b{batch} load {load:.2f} {name:18s} "
                  f"median {med * 1e3:9.2f} ms  min {r['min_s'] * 1e3:9.2f} ms  {r['speed_vs_defaults']:5.2f}x  "
                  f"exact {r['exact']}")
    from sdrt.manifest import write_atomic

    report = {"machine": platform.platform(), "cpus": os.cpu_count(), "onnxruntime": ort.__version__, "rows": rows}
    write_atomic(args.json, json.dumps(report, indent=2).encode())
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
