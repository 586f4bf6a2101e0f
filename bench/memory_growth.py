"""Memory growth of the sdrt runtime: N consecutive generations in one process on one bundle; resident set
after the first 10 and after all N (a leak of even one UNet output per call would show up as MiBs here).

    python bench/memory_growth.py BUNDLE [--count 200] [--steps 20] [--size WxH] [--json PATH]

Each generation uses a new seed (seed = index), so fresh noise and latents are allocated every time, as in
serving. Prints RSS after 1, 10, 50, 100 and N generations, and the process's peak.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sdrt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the bundle's default size)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from sdrt.bench.memory import current_rss_bytes, peak_rss_bytes
    from sdrt.commands.bench import parse_size
    from sdrt.manifest import write_atomic
    from sdrt.runtime import GenerationRequest, Pipeline

    width, height = parse_size(args.size)
    pipe = Pipeline.load(str(args.bundle), threads=args.threads)
    checkpoints = sorted({c for c in (1, 10, 50, 100, args.count) if c <= args.count})
    rss: dict[int, int] = {}
    rss_loaded = current_rss_bytes()
    start = time.perf_counter()
    for index in range(1, args.count + 1):
        pipe.generate(GenerationRequest("a lighthouse at dusk", steps=args.steps, sampler="euler", seed=index,
                                        width=width, height=height))
        if index in checkpoints:
            gc.collect()
            rss[index] = current_rss_bytes()
            print(f"after {index:>4} generations: RSS {rss[index] / 2**20:8.1f} MiB", flush=True)
    seconds = time.perf_counter() - start
    growth = rss[args.count] - rss[min(10, args.count)]
    per_call = growth / max(args.count - min(10, args.count), 1)
    print(f"growth from 10 to {args.count}: {growth / 2**20:+.2f} MiB ({per_call / 1024:+.2f} KiB per generation); "
          f"RSS after loading {rss_loaded / 2**20:.1f} MiB, peak {peak_rss_bytes() / 2**20:.1f} MiB; "
          f"{args.count} generations in {seconds:.1f} s")
    if args.json is not None:
        doc = {"bundle": str(args.bundle), "count": args.count, "steps": args.steps, "size": args.size,
               "rss_after_load_bytes": rss_loaded, "rss_after_bytes": {str(k): v for k, v in rss.items()},
               "growth_10_to_n_bytes": growth, "peak_rss_bytes": peak_rss_bytes(), "seconds": seconds}
        write_atomic(args.json, (json.dumps(doc, indent=2) + "\n").encode())
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
