"""Prometheus metrics of one server: HTTP requests, the engine's queue, batches, steps and jobs.

`ServeMetrics` is the engine's BatchObserver (SERVING.md), so the batching loop reports UNet batch sizes,
step and job latencies as they happen; the HTTP side counts requests by route and status. Each server owns
its registry, so several servers (tests, Ray replicas in one process) never share counters.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info,
                               generate_latest)

ROW_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sdrt_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("sdrt_http_request_duration_seconds", "HTTP request latency by route",
                                         ["route"], buckets=JOB_BUCKETS, registry=r)
        self.in_flight = Gauge("sdrt_http_requests_in_flight", "HTTP requests being handled", registry=r)
        self.queue_depth = Gauge("sdrt_queue_depth", "jobs admitted and waiting for the batching loop", registry=r)
        self.active = Gauge("sdrt_active_requests", "jobs in the batching loop now", registry=r)
        self.unet_rows = Histogram("sdrt_unet_batch_rows", "rows per UNet call (CFG copies included)",
                                   buckets=ROW_BUCKETS, registry=r)
        self.unet_seconds = Histogram("sdrt_unet_batch_seconds", "seconds per batched UNet call",
                                      buckets=STEP_BUCKETS, registry=r)
        self.step_seconds = Histogram("sdrt_step_seconds", "seconds per sampling step of a job",
                                      buckets=STEP_BUCKETS, registry=r)
        self.job_seconds = Histogram("sdrt_job_seconds", "end-to-end seconds per job, admission to outcome",
                                     ["outcome"], buckets=JOB_BUCKETS, registry=r)
        self.jobs = Counter("sdrt_jobs", "jobs finished, by outcome (ok, user, cancelled, timeout, engine)",
                            ["outcome"], registry=r)
        self.images = Counter("sdrt_images_generated", "images generated", registry=r)
        self.model = Info("sdrt_model", "what computes the images: precision (fp32, fp16, bf16, int8) and backend",
                          registry=r)
        self._describe: Any = None

    def watch(self, engine: Any) -> None:
        """Read the queue depth and active jobs from the engine at each scrape."""
        self.queue_depth.set_function(lambda: engine.queue_depth)
        self.active.set_function(lambda: engine.active)
        pipeline = getattr(engine, "pipeline", None)
        if pipeline is not None:  # auto settles its backend and precision at warm-up: read them at each scrape
            self._describe = lambda: {"precision": pipeline.precision, "backend": pipeline.bundle.settings.backend}

    # ---- BatchObserver -------------------------------------------------------------------------------
    def unet_batch(self, rows: int, seconds: float) -> None:
        self.unet_rows.observe(rows)
        self.unet_seconds.observe(seconds)

    def step_done(self, job: Any, seconds: float) -> None:
        self.step_seconds.observe(seconds)

    def job_finished(self, job: Any, outcome: str, seconds: float, images: int) -> None:
        self.jobs.labels(outcome).inc()
        self.job_seconds.labels(outcome).observe(seconds)
        if outcome == "ok":
            self.images.inc(images)

    # ---- HTTP ----------------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        if self._describe is not None:
            self.model.info(self._describe())
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware counting every HTTP request by route, method and status, 401s and 404s included.

    Routes are labelled by their path, and any path the app does not serve as "other", so a scanner probing
    random URLs cannot grow the number of series."""

    def __init__(self, app: Any, metrics: ServeMetrics, routes: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500
        started = time.perf_counter()

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
