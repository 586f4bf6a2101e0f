"""A one-job-at-a-time engine with BatchingEngine's public API (SERVING.md), for the HTTP tests until the
batching loop lands: one thread runs each job on the real Pipeline, reporting through sdrt.serving.jobs.Job.
No mocks: the images are the Pipeline's. The lead swaps in sdrt.serving.batcher.BatchingEngine at merge.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Sequence

from sdrt.runtime.pipeline import GenerationResult, Pipeline
from sdrt.runtime.request import GenerationRequest
from sdrt.serving.jobs import (DoneEvent, EngineStopping, FailedEvent, Job, JobCancelled, JobTimedOut,
                               QueueFull, StepEvent)
from sdrt.errors import UserError


class _Stop(Exception):
    def __init__(self, error: BaseException, kind: str) -> None:
        self.error, self.kind = error, kind


class OneAtATimeEngine:
    def __init__(self, pipeline: Pipeline, max_batch: int = 8, max_queue: int = 64, observer=None) -> None:
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.observer = observer
        self.ready = False
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._closed = False
        self._running: Job | None = None
        self._thread = threading.Thread(target=self._loop, name="sdrt-test-engine", daemon=True)
        self._started: dict[str, float] = {}

    def start(self) -> "OneAtATimeEngine":
        self._thread.start()
        self.ready = True
        return self

    def __enter__(self) -> "OneAtATimeEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        return 1 if self._running is not None else 0

    def submit(self, request: GenerationRequest, timeout: float | None = None) -> Job:
        with self._cond:
            if self._stopping:
                raise EngineStopping("the engine is draining")
        self.pipeline.check(request)  # UserError, synchronously
        with self._cond:
            if self._stopping:
                raise EngineStopping("the engine is draining")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} jobs waiting", retry_after=1)
            job = Job(request, deadline=time.monotonic() + timeout if timeout else None)
            self._started[job.id] = time.perf_counter()
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        jobs = [self.submit(r) for r in requests]
        return [job.result() for job in jobs]

    def drain(self, timeout: float | None = None) -> None:
        with self._cond:
            self._stopping = True
            self._cond.wait_for(lambda: not self._queue and self._running is None, timeout)

    def close(self) -> None:
        with self._cond:
            self._stopping = self._closed = True
            while self._queue:
                self._finish(self._queue.popleft(), FailedEvent(JobCancelled("engine closed"), "cancelled"))
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self.ready = False

    # ---- the loop -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if self._closed and not self._queue:
                    return
                job = self._running = self._queue.popleft()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run(self, job: Job) -> None:
        last = time.perf_counter()

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if self.observer is not None and done > 0:
                copies = 2 if job.request.cfg > 1 else 1
                self.observer.unet_batch(job.request.batch * copies, now - last)
                self.observer.step_done(job, now - last)
            last = now
            if done > 0:
                job.report(StepEvent(done, total, job.request.batch))
            self._check(job)

        try:
            self._check(job)
            result = self.pipeline.generate(job.request, progress=progress)
        except _Stop as stop:
            self._finish(job, FailedEvent(stop.error, stop.kind))
        except UserError as exc:
            self._finish(job, FailedEvent(exc, "user"))
        except Exception as exc:  # the engine's error fails this job only
            self._finish(job, FailedEvent(exc, "engine"))
        else:
            self._finish(job, DoneEvent(result))

    def _check(self, job: Job) -> None:
        if job.cancelled:
            raise _Stop(JobCancelled(f"{job.id} cancelled"), "cancelled")
        if job.deadline is not None and time.monotonic() > job.deadline:
            raise _Stop(JobTimedOut(f"{job.id} ran past its deadline"), "timeout")

    def _finish(self, job: Job, event: DoneEvent | FailedEvent) -> None:
        job.report(event)
        if self.observer is not None:
            outcome = "ok" if isinstance(event, DoneEvent) else event.kind
            images = len(event.result.images) if isinstance(event, DoneEvent) else 0
            self.observer.job_finished(job, outcome, time.perf_counter() - self._started.pop(job.id, 0.0), images)


# ---- running the real server in-process ---------------------------------------------------------------------
import contextlib
import dataclasses
from typing import Iterator

from sdrt.serving.app import create_app
from sdrt.serving.metrics import ServeMetrics
from sdrt.serving.model_info import ServedModel
from sdrt.serving.server import bind, make_server
from sdrt.serving.settings import ServeSettings


class RecordingEngine:
    """The engine as the app sees it, keeping every Job it hands out so tests can watch them."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.jobs: list[Job] = []

    def submit(self, request: GenerationRequest, timeout: float | None = None) -> Job:
        job = self._engine.submit(request, timeout=timeout)
        self.jobs.append(job)
        return job

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


@dataclasses.dataclass
class Served:
    url: str
    engine: RecordingEngine
    metrics: ServeMetrics
    state: object
    server: object


@contextlib.contextmanager
def running_server(pipeline: Pipeline, settings: ServeSettings | None = None, max_queue: int = 64) -> Iterator[Served]:
    """uvicorn serving create_app on 127.0.0.1 and a free port, in a thread, with the one-at-a-time engine."""
    metrics = ServeMetrics()
    engine = RecordingEngine(OneAtATimeEngine(pipeline, max_queue=max_queue, observer=metrics).start())
    app = create_app(engine, settings or ServeSettings(), ServedModel.from_pipeline(pipeline), metrics)
    sock = bind("127.0.0.1", 0)
    server = make_server(app, app.state.sdrt.start_draining, graceful_timeout=10, log_level="warning",
                         access_log=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", engine, metrics, app.state.sdrt, server)
    finally:
        server.should_exit = True
        thread.join()
        engine.close()
        sock.close()


class GatedEngine:
    """A component engine that holds each run until released, so a test decides when a step ends (no sleeps,
    no timing assumptions). `fail_once` makes the next run raise instead: the engine-error stand-in."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.entered = threading.Semaphore(0)  # released once per run that reached the gate
        self.permits = threading.Semaphore(0)
        self.holding = False
        self.fail_next = False

    def run(self, feeds):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("stand-in UNet failure")
        if self.holding:
            self.entered.release()
            self.permits.acquire()
        return self.inner.run(feeds)

    def allow(self, runs: int = 1) -> None:
        for _ in range(runs):
            self.permits.release()

    def open(self) -> None:
        self.holding = False
        self.allow(1000)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@contextlib.contextmanager
def gated_unet(pipeline: Pipeline) -> Iterator[GatedEngine]:
    """Wrap the Pipeline's UNet engine in a GatedEngine for the duration of a test."""
    inner = pipeline.engine("unet")
    gate = GatedEngine(inner)
    pipeline._engines["unet"] = gate
    try:
        yield gate
    finally:
        gate.open()
        pipeline._engines["unet"] = inner
