"""Between an HTTP request and the engine: admission, waiting for the job's events, cancellation when the
client goes away, the request timeout, and each way a job can end mapped to one HTTP error.

Uses only the engine's public API (submit, Job events, cancel), so the batching engine and the one-at-a-time
test adapter serve alike. Job.next_event blocks, so it is called in worker threads with a short timeout, and
between calls the handler checks the client and the deadline.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

import anyio
from starlette.requests import Request

from ..backends.device_lost import sticky_cuda_error
from ..errors import UserError
from ..manifest import BundleError
from ..runtime.pipeline import GenerationResult
from ..runtime.request import GenerationRequest
from .api_errors import ApiError, one_line
from .jobs import DoneEvent, EngineStopping, FailedEvent, Job, QueueFull, StepEvent
from .metrics import ServeMetrics
from .model_info import ServedModel
from .settings import ServeSettings, body_limit

POLL_SECONDS = 0.1  # how often a waiting handler looks at its client and its deadline (and after every event)
RETRY_HINT = re.compile(r":?\s*retry after \d+ s$")
log = logging.getLogger("sdrt.serve")


@dataclass
class ServerState:
    """Everything the routes share: the engine, the settings, the bundle's description, the metrics."""

    engine: Any  # sdrt.serving.batcher.BatchingEngine, or anything with its public API
    settings: ServeSettings
    model: ServedModel
    metrics: ServeMetrics
    draining: bool = False
    started: float = field(default_factory=time.time)

    def start_draining(self) -> None:
        """SIGTERM: /readyz turns false and new generations get 503; jobs already admitted finish."""
        self.draining = True

    @property
    def ready(self) -> bool:
        return bool(self.engine.ready) and not self.draining

    @property
    def max_body_bytes(self) -> int:
        """The request body limit: --max-body-bytes, or sized from the bundle's largest images."""
        return body_limit(self.settings, self.model.max_size)


def draining_error() -> ApiError:
    return ApiError(503, "draining", "the server is shutting down and takes no new requests: retry on another "
                                     "replica", headers={"Retry-After": "5"})


class Submission:
    """The jobs of one HTTP request (A1111's n_iter gives several), submitted all-or-none."""

    def __init__(self, state: ServerState, requests: Sequence[GenerationRequest]) -> None:
        self.state = state
        self.requests = list(requests)
        self.jobs: list[Job] = []
        self.deadline = time.monotonic() + state.settings.request_timeout

    async def submit(self) -> None:
        if self.state.draining:
            raise draining_error()
        try:
            for request in self.requests:
                job = await anyio.to_thread.run_sync(self._submit_one, request)
                self.jobs.append(job)
        except BaseException:
            self.cancel()
            raise

    def _submit_one(self, request: GenerationRequest) -> Job:
        try:
            return self.state.engine.submit(request, timeout=self.state.settings.request_timeout)
        except QueueFull as exc:
            retry = max(1, int(getattr(exc, "retry_after", 0) or self.state.settings.retry_after))
            reason = RETRY_HINT.sub("", str(exc))  # the engine's own hint: said once, below
            raise ApiError(429, "queue_full", f"the server's queue is full: {reason}; retry after {retry} s",
                           headers={"Retry-After": str(retry)}) from None
        except EngineStopping:
            raise draining_error() from None
        except (UserError, BundleError) as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None

    def cancel(self) -> None:
        for job in self.jobs:
            if not job.done:
                job.cancel()

    async def events(self, http: Request) -> AsyncIterator[StepEvent | DoneEvent]:
        """Every job's events in order; raises ApiError for a failed job, the deadline or a vanished client
        (then the jobs are cancelled and the error is never seen by anyone)."""
        try:
            for job in self.jobs:
                while True:
                    event = await anyio.to_thread.run_sync(job.next_event, POLL_SECONDS)
                    if event is None or isinstance(event, StepEvent):
                        # After every step too: a job whose steps come faster than the poll would otherwise
                        # run to its end for a client that has gone.
                        await self._check_client_and_clock(http)
                    if event is None:
                        continue
                    if isinstance(event, FailedEvent):
                        raise failure(event, self.state.settings.request_timeout)
                    yield event
                    if isinstance(event, DoneEvent):
                        break
        finally:
            self.cancel()  # no-op for finished jobs; stops the rest on any error or a closed stream

    async def _check_client_and_clock(self, http: Request) -> None:
        if time.monotonic() > self.deadline:
            self.cancel()
            raise timeout_error(self.state.settings.request_timeout)
        if await http.is_disconnected():
            self.cancel()
            raise ApiError(499, "cancelled", "the client closed the connection; the job was cancelled")

    async def results(self, http: Request) -> list[GenerationResult]:
        return [event.result async for event in self.events(http) if isinstance(event, DoneEvent)]


def timeout_error(seconds: float) -> ApiError:
    return ApiError(504, "timeout", f"the request did not finish within this server's {seconds:g} s timeout "
                                    "and was cancelled: ask for fewer steps or images, or retry later")


def failure(event: FailedEvent, timeout: float) -> ApiError:
    """How a job that ended badly reads to its client."""
    error = event.error
    if event.kind == "user":
        return ApiError(422, "invalid_request", str(error))
    if event.kind == "timeout":
        return timeout_error(timeout)
    lost = sticky_cuda_error(error) if event.kind == "engine" else None
    if lost is not None:
        log.error("the GPU failed in a job: %s: %s", type(error).__name__, one_line(str(error)))
        return ApiError(503, "device_lost", f"the GPU failed on this request ({lost}, a sticky CUDA error): this "
                                            "server stops and must be restarted; retry on another replica",
                        headers={"Retry-After": "5"})
    if event.kind == "cancelled":
        return ApiError(503, "cancelled", "the job was cancelled before it finished (server shutting down or "
                                          "client gone): retry")
    log.error("engine error in a job: %s: %s", type(error).__name__, one_line(str(error)))
    return ApiError(500, "engine_error", f"the engine failed on this request ({type(error).__name__}: "
                                         f"{one_line(str(error))}); the server keeps serving: retry")
