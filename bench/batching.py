"""Continuous batching against one request at a time: images/s for N concurrent clients on one bundle.

For each concurrency N (1, 4, 16) N client threads each run `--per-client` requests back to back through
one BatchingEngine, once with batching (`--max-batch`, default 32 rows) and once with `max_batch=1` (every
UNet run holds one request: no batching), alternated in the same run (`--repeats` rounds, medians). It
prints images/s, the gain, the mean UNet batch (rows per run, from the BatchObserver) and the CEILING
batching can reach here: the UNet's time per row at one request's batch (2 rows with CFG) divided by its
time per row at the mean batch achieved (the UNet timed alone, `--unet-repeats` runs each).

    python bench/batching.py [--bundle PATH] [--steps 10] [--size 64] [--json bench/results/batching.json]

Without --bundle a tiny SD1 bundle is exported to a temporary folder (needs the export extra).
ORT threads do not spin (--spin to change): the development machine's cores are shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from host_overhead import tiny_bundle  # noqa: E402


class Rows:
    """BatchObserver counting UNet rows per run."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def unet_batch(self, rows: int, seconds: float) -> None:
        self.rows.append(rows)

    def step_done(self, job, seconds: float) -> None:
        pass

    def job_finished(self, job, outcome: str, seconds: float, images: int) -> None:
        if outcome != "ok":
            raise RuntimeError(f"{job.id} failed: {outcome}")


def run_clients(pipe, clients: int, per_client: int, max_batch: int, args) -> dict:
    from sdrt.runtime import GenerationRequest
    from sdrt.serving.batcher import BatchingEngine

    rows = Rows()
    failures: list[BaseException] = []
    latencies: list[float] = []
    with BatchingEngine(pipe, max_batch=max_batch, max_queue=max(64, clients), observer=rows) as engine:
        engine.generate_many([GenerationRequest("warm", steps=1, width=args.size, height=args.size)])
        rows.rows.clear()

        def client(k: int) -> None:
            for i in range(per_client):
                request = GenerationRequest(f"a red cube {k}", steps=args.steps, sampler=args.sampler,
                                            seed=1000 * k + i, cfg=args.cfg, width=args.size, height=args.size)
                t0 = time.perf_counter()
                try:
                    engine.submit(request).result()
                except BaseException as exc:  # noqa: BLE001 - counted
                    failures.append(exc)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
    images = clients * per_client - len(failures)
    return {"images_per_s": images / seconds, "mean_unet_rows": statistics.mean(rows.rows),
            "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95)),
            "failed": len(failures)}


def unet_ms_per_row(pipe, batches: list[int], size: int, repeats: int) -> dict[int, float]:
    """Median UNet time per row for each batch size, the sizes timed in alternation (same machine load)."""
    from sdrt.backends.engine import run_engine

    unet = pipe.engine("unet")
    latent = size // pipe.model.vae_scale_factor
    dim = unet.inputs["encoder_hidden_states"].shape[2]
    rng = np.random.default_rng(0)
    feeds = {rows: {"sample": rng.standard_normal((rows, 4, latent, latent), dtype=np.float32),
                    "timestep": np.full(rows, 500.0, np.float32),
                    "encoder_hidden_states": np.zeros((rows, 77, dim), np.float32)} for rows in set(batches)}
    times: dict[int, list[float]] = {rows: [] for rows in feeds}
    for rows in feeds:
        run_engine(unet, feeds[rows])
    for _ in range(repeats):
        for rows, feed in feeds.items():
            t0 = time.perf_counter()
            run_engine(unet, feed)
            times[rows].append((time.perf_counter() - t0) / rows * 1e3)
    return {rows: statistics.median(t) for rows, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--per-client", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unet-repeats", type=int, default=30)
    parser.add_argument("--spin", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench/results/batching.json"))
    args = parser.parse_args()
    from sdrt.manifest import write_atomic
    from sdrt.runtime import Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or tiny_bundle(Path(tmp))
        pipe = Pipeline.load(str(bundle), spin=args.spin)
        table = []
        for clients in args.concurrency:
            runs: dict[str, list[dict]] = {"batched": [], "max_batch=1": []}
            for _ in range(args.repeats):  # alternated, so both modes see the same machine load
                runs["batched"].append(run_clients(pipe, clients, args.per_client, args.max_batch, args))
                runs["max_batch=1"].append(run_clients(pipe, clients, args.per_client, 1, args))
            row = {"concurrency": clients}
            for mode, results in runs.items():
                row[mode] = {key: statistics.median(r[key] for r in results) for key in results[0]}
                row[mode]["failed"] = sum(r["failed"] for r in results)
            one_request = 2 if args.cfg > 1 else 1
            mean_rows = row["batched"]["mean_unet_rows"]
            mean_batch = max(one_request, round(mean_rows))
            per_row = unet_ms_per_row(pipe, [one_request, mean_batch], args.size, args.unet_repeats)
            at_one, at_mean = per_row[one_request], per_row[mean_batch]
            row["gain"] = row["batched"]["images_per_s"] / row["max_batch=1"]["images_per_s"]
            row["unet_ms_per_row_one_request"] = at_one
            row["unet_ms_per_row_mean_batch"] = at_mean
            row["ceiling"] = at_one / at_mean
            row["gain_over_ceiling"] = row["gain"] / row["ceiling"]
            table.append(row)
            print(f"done concurrency {clients}", file=sys.stderr)

    print(f"{'N':>3s} {'batched img/s':>13s} {'mb=1 img/s':>10s} {'gain':>5s} {'mean rows':>9s} "
          f"{'ms/row@1req':>11s} {'ms/row@mean':>11s} {'ceiling':>7s} {'gain/ceil':>9s} "
          f"{'p50/p95 batched s':>17s} {'failed':>6s}")
    for r in table:
        b, m = r["batched"], r["max_batch=1"]
        print(f"{r['concurrency']:3d} {b['images_per_s']:13.1f} {m['images_per_s']:10.1f} {r['gain']:5.2f} "
              f"{b['mean_unet_rows']:9.1f} {r['unet_ms_per_row_one_request']:11.2f} "
              f"{r['unet_ms_per_row_mean_batch']:11.2f} {r['ceiling']:7.2f} {r['gain_over_ceiling']:9.2f} "
              f"{b['p50_s']:8.3f}/{b['p95_s']:.3f} {b['failed'] + m['failed']:6d}")
    import onnxruntime

    report = {"machine": platform.platform(), "processor": platform.processor(),
              "onnxruntime": onnxruntime.__version__, "settings": {k: str(v) for k, v in vars(args).items()},
              "rows": table}
    write_atomic(args.json, json.dumps(report, indent=2).encode())
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
