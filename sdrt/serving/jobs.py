"""A submitted generation and the events it reports: the seam between the batching loop and its callers.

The loop thread produces events; any number of caller threads (an HTTP handler, a library user) consume
them. Everything here is thread-safe and torch-free, so the HTTP layer and the batching loop can be written
and tested apart.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass
from typing import Union

from ..runtime.pipeline import GenerationResult
from ..runtime.request import GenerationRequest


@dataclass(frozen=True)
class StepEvent:
    """One finished sampling step; all images of a job step together."""

    step: int  # steps done, 1..total
    total: int
    images: int


@dataclass(frozen=True)
class DoneEvent:
    result: GenerationResult


@dataclass(frozen=True)
class FailedEvent:
    error: BaseException
    kind: str  # "user" | "cancelled" | "timeout" | "engine"


Event = Union[StepEvent, DoneEvent, FailedEvent]


class JobCancelled(Exception):
    """The job was cancelled (client gone or `Job.cancel`) before it finished."""


class JobTimedOut(Exception):
    """The job ran past its deadline and was stopped at a step boundary."""


class QueueFull(Exception):
    """Too many jobs are waiting; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineStopping(Exception):
    """The engine is draining or closed and accepts no new jobs."""


_ids = itertools.count(1)


class Job:
    """A request on its way through the engine. Events arrive in order and end with Done or Failed."""

    def __init__(self, request: GenerationRequest, deadline: float | None = None) -> None:
        self.id = f"job-{next(_ids)}"
        self.request = request
        self.deadline = deadline  # time.monotonic() value after which the loop stops the job, or None
        self._events: queue.Queue[Event] = queue.Queue()
        self._finished = threading.Event()
        self._outcome: DoneEvent | FailedEvent | None = None
        self._cancel = threading.Event()

    # ---- consumer side ------------------------------------------------------------------------------
    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when none arrived within `timeout` seconds."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Wait for the end; the images, or the error that ended the job raised here."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"{self.id} did not finish within {timeout} s")
        if isinstance(self._outcome, FailedEvent):
            raise self._outcome.error
        assert isinstance(self._outcome, DoneEvent)
        return self._outcome.result

    def cancel(self) -> None:
        """Ask the loop to drop this job at the next step boundary (it then reports FailedEvent 'cancelled')."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    # ---- producer side (the batching loop) ----------------------------------------------------------
    def report(self, event: Event) -> None:
        """Queue an event; the first Done/Failed ends the job and later events are dropped."""
        if self._finished.is_set():
            return
        if isinstance(event, (DoneEvent, FailedEvent)):
            self._outcome = event
            self._events.put(event)
            self._finished.set()
        else:
            self._events.put(event)
