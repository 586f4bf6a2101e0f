"""Timing a generation from outside: every engine is wrapped in a proxy that records when each call started
and how long it took, and the pipeline's progress callback marks the step boundaries.

A denoising step is the time between two progress marks; its engine time is the sum of the UNet calls that
started inside it, and its host overhead is the rest (sampler arithmetic, classifier-free guidance, buffer
copies, the progress callback). The proxy's own cost (two clock reads and a list append, well under a
microsecond) counts as engine time, so it never inflates the host overhead being judged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..backends.engine import Engine, IOSpec
from ..runtime.pipeline import Pipeline
from ..runtime.request import GenerationRequest
from .stats import RunRecord, StepTime


@dataclass(frozen=True)
class EngineCall:
    start: float  # time.perf_counter() at the start of the call
    seconds: float


class TimedEngine:
    """An `Engine` that forwards to another and remembers each call's start and duration."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.inputs: Mapping[str, IOSpec] = inner.inputs
        self.outputs: Mapping[str, IOSpec] = inner.outputs
        self.lock = getattr(inner, "lock", None)  # the inner engine's: callers reading its buffers hold it
        self.calls: list[EngineCall] = []

    @property
    def providers(self) -> list[str]:
        return self.inner.providers

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = self.inner.run(feeds)
        self.calls.append(EngineCall(start, time.perf_counter() - start))
        return out

    def take(self) -> list[EngineCall]:
        """The calls recorded since the last `take`, forgetting them (one run's worth at a time)."""
        calls, self.calls = self.calls, []
        return calls


class TimedPipeline(Pipeline):
    """A `Pipeline` whose engines are all `TimedEngine`s (the text encoders too, since the prompt encoder
    asks `engine()` for them)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timed: dict[str, TimedEngine] = {}

    def engine(self, name: str) -> TimedEngine:
        if name not in self.timed:
            self.timed[name] = TimedEngine(super().engine(name))
        return self.timed[name]

    def forget_calls(self) -> None:
        for engine in self.timed.values():
            engine.take()


def measure_run(pipe: TimedPipeline, request: GenerationRequest) -> RunRecord:
    """Run `request` once and split its time into stages and per-step engine / host time."""
    pipe.forget_calls()
    marks: list[float] = []

    def progress(done: int, total: int) -> None:
        marks.append(time.perf_counter())

    result = pipe.generate(request, progress=progress)
    t = result.timings
    unet_calls = pipe.engine("unet").take()
    # The last mark is the loop's end (the pipeline reports total/total once the sampler returns); the
    # loop's start is that minus the loop time the pipeline measured itself.
    edges = [marks[-1] - t.loop, *marks] if marks else []
    steps = []
    for left, right in zip(edges, edges[1:]):
        engine = sum(c.seconds for c in unet_calls if left <= c.start < right)
        steps.append(StepTime(engine=engine, host=max(right - left - engine, 0.0)))
    text_engine = sum(c.seconds for name, e in pipe.timed.items() if name.startswith("text_encoder")
                      for c in e.take())
    return RunRecord(end_to_end=t.total, text_encoding=t.text, text_engine=text_engine, prepare_latents=t.vae_encode,
                     denoising=t.loop, vae_decode=t.vae_decode, unet_calls=len(unet_calls), steps=steps)
