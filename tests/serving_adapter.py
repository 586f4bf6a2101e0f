"""The HTTP tests' harness: the real server (uvicorn, create_app) on a free loopback port in a thread, over the
real BatchingEngine on the test's Pipeline, plus a UNet gate that lets a test decide when steps end.
No mocks: the images are the Pipeline's.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import threading
import time
from typing import Iterator

import numpy as np
from PIL import Image

from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest
from sdrt.serving.app import create_app
from sdrt.serving.batcher import BatchingEngine
from sdrt.serving.jobs import Job
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
def running_server(pipeline: Pipeline, settings: ServeSettings | None = None, max_queue: int = 64,
                   model: ServedModel | None = None) -> Iterator[Served]:
    """uvicorn serving create_app on 127.0.0.1 and a free port, in a thread, over a BatchingEngine; `model`
    replaces the bundle's description (a test's tokenizer)."""
    metrics = ServeMetrics()
    settings = settings or ServeSettings()
    engine = RecordingEngine(BatchingEngine(pipeline, max_queue=max_queue, observer=metrics).start())
    app = create_app(engine, settings, model or ServedModel.from_pipeline(pipeline), metrics)
    sock = bind("127.0.0.1", 0)
    server = make_server(app, app.state.sdrt.start_draining, graceful_timeout=10, log_level="warning",
                         access_log=False, settings=settings)
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


def png(b64: str) -> Image.Image:
    """A base64 PNG from a response, decoded (and checked to be a PNG)."""
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    assert image.format == "PNG"
    return image


def b64png(image: Image.Image, prefix: str = "") -> str:
    """An image as a request sends it: base64 PNG, after `prefix` (e.g. a data-URL header)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return prefix + base64.b64encode(buffer.getvalue()).decode()


def close_to(image: Image.Image, pixels: np.ndarray) -> bool:
    """Within 2/255 of the Pipeline's own result (exact with the one-at-a-time engine; the batching engine
    promises 2/255)."""
    return np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - pixels.astype(np.int16)).max() <= 2
