"""Load test of `sdrt serve` over loopback: continuous batching against `--max-batch 1`, alternated in one run.

For each model the bench starts two real `sdrt serve` subprocesses on free ports (one with `--max-batch
MAX_BATCH`, one with `--max-batch 1`: a UNet run then holds one request, i.e. one request at a time), waits
for /readyz, and drives them in turn over HTTP (OpenAI route, one image per request, every request another
prompt and seed) with concurrency 1, 4 and 16: `--rounds` rounds, the two modes alternating at each
concurrency so both see the same machine load. Per run: images/s, p50/p95/p99 latency, errors, and the mean
UNet batch (rows per UNet call, CFG copies included) from the server's own /metrics (difference of
`sdrt_unet_batch_rows` before and after the run). Several rounds are pooled (latencies) or take the median
(images/s).

The CEILING of batching on this machine: the UNet's time per row at one request's batch (2 rows with CFG)
divided by its time per row at the mean batch the batched server achieved, timed in this process with the
bundle's UNet through sdrt's engine (bench/batching.py's `unet_ms_per_row`, sizes alternated; a fractional
mean interpolates linearly between the neighbouring whole batches). gain / ceiling says how much of what
batching could give the server delivers.

`--soak`: a fresh batched server on the tiny model, 1,000 requests of 2 steps (concurrency 16); its RSS
(/proc/PID/status VmRSS) after 100 and after 1,000 requests.

Models: `tiny` is the built-in model of `sdrt demo` (its cached bundle, exported on first use); `mid` is
bench/compare.py's mid-size model (SD 1.5's channel widths 320/640/1280, cross-attention 768, one layer per
block and three levels: 316 M UNet parameters), exported once into --workdir. Both run at 64x64 (the mid
model's UNet costs ~1 s per 2-row call at 128x128 on a 2-core CPU, too slow to load-test meaningfully).

    python bench/serve_load.py [--models tiny,mid] [--concurrency 1 4 16] [--rounds 2] [--soak]
                               [--json bench/results/serve_load.json]

Needs the serve extra (fastapi, uvicorn, prometheus-client), httpx, and the export extra the first time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's sdrt
sys.path.insert(0, str(ROOT / "bench"))
MODES = ("batched", "max_batch=1")


# ---- arithmetic (pure; tests/test_bench_serve_load.py) -----------------------------------------------

def latency_stats(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (numpy's linear interpolation) and the p99/p50 ratio, in seconds."""
    p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
    return {"p50_s": p50, "p95_s": p95, "p99_s": p99, "p99_over_p50": p99 / p50}


def metric_value(text: str, name: str) -> float:
    """The sum of every sample of one series in Prometheus text format (all label sets), 0 if absent."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", line)
        if match:
            total += float(match.group(1))
    return total


@dataclass(frozen=True)
class UNetTotals:
    """The server's UNet counters at one moment: calls, rows and seconds so far."""

    calls: float
    rows: float
    seconds: float

    @classmethod
    def parse(cls, metrics_text: str) -> "UNetTotals":
        return cls(metric_value(metrics_text, "sdrt_unet_batch_rows_count"),
                   metric_value(metrics_text, "sdrt_unet_batch_rows_sum"),
                   metric_value(metrics_text, "sdrt_unet_batch_seconds_sum"))

    def since(self, before: "UNetTotals") -> dict[str, float]:
        """Mean rows per UNet call and UNet ms per row over the interval."""
        calls, rows = self.calls - before.calls, self.rows - before.rows
        return {"unet_calls": calls, "mean_unet_rows": rows / calls if calls else math.nan,
                "server_unet_ms_per_row": (self.seconds - before.seconds) / rows * 1e3 if rows else math.nan}


def ms_per_row_at(per_row: dict[int, float], rows: float) -> float:
    """Time per row at a fractional batch: linear between the two neighbouring measured whole batches."""
    low, high = math.floor(rows), math.ceil(rows)
    if low == high:
        return per_row[low]
    weight = rows - low
    return per_row[low] * (1 - weight) + per_row[high] * weight


def batch_sizes_to_time(one_request: int, means: Iterable[float]) -> list[int]:
    """The whole batches whose UNet time `ms_per_row_at` needs for these means (never below one request)."""
    sizes = {one_request}
    for mean in means:
        mean = max(mean, one_request)
        sizes |= {math.floor(mean), math.ceil(mean)}
    return sorted(sizes)


def ceiling_figures(per_row: dict[int, float], one_request: int, mean_rows: float,
                    batched_ips: float, single_ips: float) -> dict[str, float]:
    """gain (images/s batched over max-batch 1), ceiling (UNet ms/row at one request's batch over ms/row at
    the mean batch achieved) and their ratio."""
    at_one = per_row[one_request]
    at_mean = ms_per_row_at(per_row, max(mean_rows, one_request))
    gain, ceiling = batched_ips / single_ips, at_one / at_mean
    return {"gain": gain, "unet_ms_per_row_one_request": at_one, "unet_ms_per_row_mean_batch": at_mean,
            "ceiling": ceiling, "gain_over_ceiling": gain / ceiling}


def combine_rounds(runs: Sequence[dict]) -> dict:
    """Rounds of one (concurrency, mode): images/s median, latencies pooled, errors and UNet counters summed."""
    latencies = [t for run in runs for t in run["latencies"]]
    calls = sum(run["unet_calls"] for run in runs)
    rows = sum(run["unet_calls"] * run["mean_unet_rows"] for run in runs)
    unet_ms = sum(run["unet_calls"] * run["mean_unet_rows"] * run["server_unet_ms_per_row"] for run in runs)
    return {"images_per_s": statistics.median(run["images_per_s"] for run in runs),
            "requests": sum(run["requests"] for run in runs), "errors": sum(run["errors"] for run in runs),
            **latency_stats(latencies), "mean_unet_rows": rows / calls, "server_unet_ms_per_row": unet_ms / rows,
            "error_samples": [e for run in runs for e in run["error_samples"]][:3]}


def rss_growth(after_100: int, after_1000: int) -> float:
    return after_1000 / after_100 - 1


# ---- a server subprocess -----------------------------------------------------------------------------

class Server:
    """`sdrt serve BUNDLE --port 0 ...` in a subprocess; its port is read from its first stderr line."""

    def __init__(self, bundle: Path, max_batch: int, threads: int, log_dir: Path, name: str) -> None:
        self.log = log_dir / f"{name}.log"
        self.stderr = self.log.open("w")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sdrt.cli", "serve", str(bundle), "--port", "0", "--max-batch", str(max_batch),
             "--max-queue", "256", "--threads", str(threads), "--no-spin", "--log-level", "warning",
             "--request-timeout", "600"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.stderr)
        self.url = self._wait_for_url()
        self._wait_ready()

    def _wait_for_url(self) -> str:
        for _ in range(1200):
            found = re.search(r" on (http://127\.0\.0\.1:\d+) ", self.log.read_text())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"sdrt serve exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"sdrt serve did not start: {self.log.read_text()[-2000:]}")

    def _wait_ready(self) -> None:
        import httpx

        for _ in range(3000):
            try:
                if httpx.get(f"{self.url}/readyz", timeout=10).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.url} never got ready: {self.log.read_text()[-2000:]}")

    def unet_totals(self) -> UNetTotals:
        import httpx

        return UNetTotals.parse(httpx.get(f"{self.url}/metrics", timeout=30).text)

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


# ---- load --------------------------------------------------------------------------------------------

def drive(url: str, clients: int, requests: int, body: Callable[[int], dict]) -> dict:
    """`clients` threads, each with its own HTTP connection, send `requests` requests in all, back to back."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = http.post("/v1/images/generations", json=body(i))
                    ok = r.status_code == 200 and len(r.json()["data"]) == 1
                    problem = None if ok else f"{r.status_code} {r.text[:200]}"
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - t0
                with lock:
                    if problem is None:
                        latencies.append(elapsed)
                    else:
                        errors.append(problem)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    return {"images_per_s": len(latencies) / seconds, "seconds": seconds, "requests": requests,
            "errors": len(errors), "error_samples": errors[:3], "latencies": latencies}


def request_body(args: argparse.Namespace, steps: int, salt: int) -> Callable[[int], dict]:
    def body(i: int) -> dict:
        return {"prompt": f"a red circle on a blue background {salt}-{i}", "size": f"{args.size}x{args.size}",
                "steps": steps, "sampler": args.sampler, "cfg": args.cfg, "seed": salt * 100_000 + i}
    return body


def measured_run(server: Server, clients: int, requests: int, body: Callable[[int], dict]) -> dict:
    before = server.unet_totals()
    run = drive(server.url, clients, requests, body)
    return {**run, **server.unet_totals().since(before)}


# ---- models ------------------------------------------------------------------------------------------

def model_bundle(name: str, workdir: Path) -> Path:
    if name == "tiny":
        from sdrt.tools.demo import bundle_for_builtin

        return bundle_for_builtin(say=lambda m: print(m, file=sys.stderr))
    if name == "mid":
        from compare import prepare  # bench/compare.py's mid-size model, exported once into workdir

        return prepare("mid", workdir)[1]
    raise SystemExit(f"error: unknown model {name!r}: use tiny or mid")


def unet_per_row(bundle: Path, sizes: list[int], args: argparse.Namespace) -> dict[int, float]:
    from batching import unet_ms_per_row  # the UNet alone through sdrt's engine, sizes alternated

    from sdrt.runtime import Pipeline

    pipe = Pipeline.load(str(bundle), threads=args.threads, spin=False)
    try:
        return unet_ms_per_row(pipe, sizes, args.size, args.unet_repeats)
    finally:
        pipe.close()


def bench_model(name: str, args: argparse.Namespace, log_dir: Path) -> dict:
    bundle = model_bundle(name, args.workdir)
    steps = args.steps[name]
    requests = {c: max(c * args.per_client, args.min_requests) for c in args.concurrency}
    servers = {"batched": Server(bundle, args.max_batch, args.threads, log_dir, f"{name}-batched"),
               "max_batch=1": Server(bundle, 1, args.threads, log_dir, f"{name}-mb1")}
    runs: dict[tuple[int, str], list[dict]] = {}
    try:
        for server in servers.values():  # one request each first: lazy imports, first PNG
            drive(server.url, 1, 1, request_body(args, steps, 99))
        for round_ in range(args.rounds):
            for clients in args.concurrency:
                order = MODES if round_ % 2 == 0 else MODES[::-1]
                for mode in order:
                    run = measured_run(servers[mode], clients, requests[clients],
                                       request_body(args, steps, 1000 * round_ + clients))
                    runs.setdefault((clients, mode), []).append(run)
                    print(f"[{name}] round {round_ + 1} concurrency {clients:2d} {mode:12s} "
                          f"{run['images_per_s']:7.2f} img/s  mean rows {run['mean_unet_rows']:5.2f}  "
                          f"errors {run['errors']}  load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    one_request = 2 if args.cfg > 1 else 1
    combined = {key: combine_rounds(value) for key, value in runs.items()}
    means = [combined[(c, "batched")]["mean_unet_rows"] for c in args.concurrency]
    per_row = unet_per_row(bundle, batch_sizes_to_time(one_request, means), args)
    rows = []
    for clients in args.concurrency:
        batched, single = combined[(clients, "batched")], combined[(clients, "max_batch=1")]
        rows.append({"concurrency": clients, "batched": batched, "max_batch=1": single,
                     **ceiling_figures(per_row, one_request, batched["mean_unet_rows"], batched["images_per_s"],
                                       single["images_per_s"])})
    return {"model": name, "bundle": str(bundle), "steps": steps, "size": args.size,
            "requests_per_run": requests, "unet_ms_per_row_by_batch": per_row, "rows": rows}


def soak(args: argparse.Namespace, log_dir: Path) -> dict:
    bundle = model_bundle("tiny", args.workdir)
    server = Server(bundle, args.max_batch, args.threads, log_dir, "soak")
    rss, errors = [], 0
    try:
        for hundred in range(args.soak_requests // 100):  # RSS every 100 requests: a leak climbs, a warming
            # allocator levels off
            errors += drive(server.url, 16, 100, request_body(args, 2, 7 + hundred))["errors"]
            rss.append(server.rss_bytes())
    finally:
        server.stop()
    return {"requests": len(rss) * 100, "steps": 2, "errors": errors, "rss_after_100_mb": rss[0] / 2**20,
            "rss_after_1000_mb": rss[9] / 2**20, "rss_growth": rss_growth(rss[0], rss[9]),
            "rss_mb_every_100": [round(r / 2**20, 1) for r in rss]}


# ---- report ------------------------------------------------------------------------------------------

def table(result: dict) -> str:
    lines = [f"| model | N | mode | img/s | p50 s | p95 s | p99 s | mean UNet rows | errors | gain | ceiling | "
             "gain/ceiling |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in result["models"]:
        for row in model["rows"]:
            for mode in MODES:
                m = row[mode]
                extra = (f"{row['gain']:.2f}x | {row['ceiling']:.2f}x | {row['gain_over_ceiling']:.0%}"
                         if mode == "batched" else " | | ")
                lines.append(f"| {model['model']} | {row['concurrency']} | {mode} | {m['images_per_s']:.2f} | "
                             f"{m['p50_s']:.3f} | {m['p95_s']:.3f} | {m['p99_s']:.3f} | {m['mean_unet_rows']:.2f} | "
                             f"{m['errors']}/{m['requests']} | {extra} |")
    return "\n".join(lines)


def targets(result: dict) -> list[str]:
    """The issue's targets, each with the figure and met / not met."""
    out = []
    for model in result["models"]:
        rows = {row["concurrency"]: row for row in model["rows"]}
        name = model["model"]
        if 16 in rows:
            r = rows[16]
            out.append(f"{name}: gain at 16 = {r['gain']:.2f}x, ceiling {r['ceiling']:.2f}x, "
                       f"gain/ceiling {r['gain_over_ceiling']:.0%} (target >= 80%): "
                       f"{'met' if r['gain_over_ceiling'] >= 0.8 else 'NOT met'}")
        errors = sum(row[mode]["errors"] for row in model["rows"] for mode in MODES)
        out.append(f"{name}: failed requests {errors} (target 0): {'met' if errors == 0 else 'NOT met'}")
        if 4 in rows:
            ratio = rows[4]["batched"]["p99_over_p50"]
            out.append(f"{name}: p99/p50 at 4 (batched) = {ratio:.2f} (target <= 2): "
                       f"{'met' if ratio <= 2 else 'NOT met'}")
    if result.get("soak"):
        s = result["soak"]
        out.append(f"tiny soak: RSS {s['rss_after_100_mb']:.1f} MB after 100, {s['rss_after_1000_mb']:.1f} MB "
                   f"after 1000 ({s['rss_growth']:+.1%}; target within 5%), errors {s['errors']}: "
                   f"{'met' if abs(s['rss_growth']) <= 0.05 and s['errors'] == 0 else 'NOT met'}")
        if s.get("rss_mb_every_100"):
            out.append(f"tiny soak: RSS MB after each 100 requests: {s['rss_mb_every_100']}")
    return out


def parse_steps(text: str) -> dict[str, int]:
    return {name: int(steps) for name, steps in (part.split("=") for part in text.split(","))}


def main() -> None:
    from sdrt.tinymodel.builtin import cache_root

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds per configuration")
    parser.add_argument("--per-client", type=int, default=2, help="requests per client thread in a run")
    parser.add_argument("--min-requests", type=int, default=8, help="fewest requests in a run")
    parser.add_argument("--steps", type=parse_steps, default=parse_steps("tiny=10,mid=4"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--max-batch", type=int, default=32, help="the batched server's --max-batch (rows)")
    parser.add_argument("--threads", type=int, default=0, help="each server's --threads")
    parser.add_argument("--unet-repeats", type=int, default=20)
    parser.add_argument("--soak", action="store_true", help="also RSS after 100 and 1,000 requests (tiny)")
    parser.add_argument("--soak-requests", type=int, default=1000,
                        help="requests in the soak (at least 1000; RSS is read every 100)")
    parser.add_argument("--workdir", type=Path, default=cache_root() / "bench-models")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    args = parser.parse_args()
    if args.soak_requests < 1000:
        parser.error("--soak-requests must be at least 1000")
    from sdrt.manifest import write_atomic

    load_start = os.getloadavg()
    started = time.perf_counter()
    result: dict = {"machine": platform.platform(), "cores": os.cpu_count(), "load_average_start": load_start,
                    "settings": {k: str(v) for k, v in vars(args).items()}, "models": []}
    with tempfile.TemporaryDirectory() as logs:
        for name in args.models.split(","):
            result["models"].append(bench_model(name, args, Path(logs)))
        if args.soak:
            result["soak"] = soak(args, Path(logs))
    result["load_average_end"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - started
    result["targets"] = targets(result)
    print(table(result))
    for model in result["models"]:
        sizes = ", ".join(f"{k}: {v:.2f}" for k, v in model["unet_ms_per_row_by_batch"].items())
        print(f"{model['model']}: {model['steps']} steps, {model['size']}x{model['size']}, UNet ms/row by batch "
              f"rows {{{sizes}}}")
    for line in result["targets"]:
        print(line)
    print(f"load average (1, 5, 15 min) at start {tuple(round(x, 2) for x in load_start)}, at end "
          f"{tuple(round(x, 2) for x in result['load_average_end'])}; {os.cpu_count()} cores; "
          f"{result['seconds']:.0f} s")
    write_atomic(args.json, json.dumps(result, indent=2).encode())
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
