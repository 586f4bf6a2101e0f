"""Step-level continuous batching: ONE loop thread per loaded bundle owns its engines and serves every job.

Each job is a prepared request (`sdrt.runtime.generation.Generation`) whose sampler generator yields one UNet
call at a time. At each iteration the loop
1. drops cancelled and timed-out jobs (their rows are free from this run on);
2. admits waiting jobs, first come first served per latent size, while that size's rows fit in `max_batch`;
   their prompts go through the text encoders in one run;
3. runs ONE UNet call for one group (same latent size, channels and text length; groups take turns):
   the pending calls of its jobs stacked, each job with its own CFG rows, timestep and conditioning, and
   each job then applies its own guidance and sampler step to its rows (`UNetBatch`, the code path of
   `Pipeline.generate` itself);
4. finishes jobs whose sampling ended, with the VAE decode batched across jobs of one latent size.
So jobs join and leave between UNet calls: a new request never waits for another to finish.

An exception in a batched engine run fails the jobs of that run only (FailedEvent "engine"; "user" for a
UserError, e.g. NaN results) and the loop keeps serving, except after a sticky CUDA error
(sdrt.backends.device_lost): then every later GPU call fails, so the engine turns not ready, fails every job,
refuses new ones, stops its loop and calls `on_device_lost` (`sdrt serve` then exits non-zero for its
orchestrator to restart it). Scheduling rules: sdrt/serving/groups.py.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from ..backends.device_lost import sticky_cuda_error
from ..errors import UserError
from ..manifest import ModelInfo
from ..runtime.generation import Generation, UNetBatch
from ..runtime.guidance import uses_cfg
from ..runtime.pipeline import GenerationResult, Pipeline
from ..runtime.request import GenerationRequest
from .groups import RoundRobin, padded_rows, pick
from .jobs import DoneEvent, EngineStopping, FailedEvent, Job, JobCancelled, JobTimedOut, QueueFull, StepEvent

log = logging.getLogger(__name__)


class BatchObserver(Protocol):
    """Metrics hooks, called on the loop thread (keep them quick; exceptions are logged and ignored)."""

    def unet_batch(self, rows: int, seconds: float) -> None: ...

    def step_done(self, job: Job, seconds: float) -> None: ...

    def job_finished(self, job: Job, outcome: str, seconds: float, images: int) -> None: ...


@dataclass
class _Waiting:
    job: Job
    size: tuple[int, int]  # (height, width), from the check at submit
    rows: int  # UNet rows per call: images x CFG copies
    submitted: float  # time.monotonic()


@dataclass
class _Running:
    job: Job
    generation: Generation
    submitted: float
    order: int  # admission order, breaks ties in fairness
    served: int = -1  # loop iteration of its last UNet run
    last_step: float = field(default_factory=time.perf_counter)


class BatchingEngine:
    """Serves generation requests for one Pipeline with step-level continuous batching (module doc).

    `max_batch` caps the rows of a UNet run (further capped by a TensorRT engine's largest profile);
    `max_queue` caps the jobs waiting to be admitted (QueueFull beyond). `pad_batches` pads runs to fixed
    sizes (default: on GPU backends only). `warmup` runs one 1-step generation before `ready` turns true.
    """

    def __init__(self, pipeline: Pipeline, max_batch: int = 8, max_queue: int = 64,
                 observer: BatchObserver | None = None, pad_batches: bool | None = None,
                 warmup: bool = True) -> None:
        if max_batch < 1 or max_queue < 1:
            raise UserError(f"max batch and max queue must be >= 1, got {max_batch} and {max_queue}")
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.observer = observer
        self.pad_batches = pipeline.on_gpu if pad_batches is None else pad_batches
        self.warmup = warmup
        self.ready = False
        self.warmup_error: BaseException | None = None
        self._warmed = threading.Event()  # set once the loop thread's warm-up ended, either way
        self.device_lost: str | None = None  # set on a sticky CUDA error: one line saying what happened
        self.on_device_lost: Callable[[], None] | None = None  # called once, on the loop thread
        self._cv = threading.Condition()
        self._waiting: deque[_Waiting] = deque()
        self._running: list[_Running] = []
        self._stopping = False  # no new jobs (drain or close)
        self._abort = False  # fail whatever is left and stop (close, or drain past its timeout)
        self._thread: threading.Thread | None = None
        self._unets: dict[tuple, UNetBatch] = {}  # per group: each keeps its stacked conditioning
        self._groups = RoundRobin()
        self._iteration = 0
        self._admitted = 0
        self._job_seconds = 1.0  # moving average of a job's time in the engine, for Retry-After

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "BatchingEngine":
        with self._cv:
            if self._stopping:
                raise EngineStopping("the engine is stopping and cannot be started again")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="sdrt-batching", daemon=True)
                self._thread.start()
        return self

    def __enter__(self) -> "BatchingEngine":
        return self.start()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.drain()
        else:
            self.close()

    def drain(self, timeout: float | None = None) -> None:
        """Stop accepting (submit raises EngineStopping), finish every accepted job, then stop the loop.
        Jobs still unfinished after `timeout` seconds are cancelled."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            thread = self._thread
        if thread is None:
            self._fail_all(JobCancelled("the engine stopped before this job started"), "cancelled")
            return
        thread.join(timeout)
        if thread.is_alive():
            self.close()

    def close(self) -> None:
        """Stop now: jobs not finished end with FailedEvent "cancelled"."""
        with self._cv:
            self._stopping = self._abort = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._fail_all(JobCancelled("the engine was closed before this job finished"), "cancelled")

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._running)

    # ---- submitting ---------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, timeout: float | None = None) -> Job:
        """Queue a request (checked now: UserError for bad input); `timeout` seconds until it is stopped
        with JobTimedOut. QueueFull when `max_queue` jobs already wait; EngineStopping when draining."""
        with self._cv:
            if self._stopping:
                raise EngineStopping("the engine is shutting down and accepts no new requests")
        _, size = self.pipeline.check(request)
        now = time.monotonic()
        job = Job(request, deadline=None if timeout is None else now + timeout)
        rows = request.batch * (2 if uses_cfg(request.cfg) else 1)
        with self._cv:
            if self._stopping:
                raise EngineStopping("the engine is shutting down and accepts no new requests")
            if len(self._waiting) >= self.max_queue:
                retry = max(1, math.ceil(self._job_seconds * len(self._waiting) / max(self.max_batch, 1)))
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (max queue "
                                f"{self.max_queue}): retry after {retry} s", retry_after=retry)
            self._waiting.append(_Waiting(job, size, rows, now))
            self._cv.notify_all()
        return job

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate several requests batched together; results in the order of `requests` (the library API).
        Waits for queue room rather than raising QueueFull; the first failure is raised (after cancelling the
        jobs still running)."""
        self.start()
        jobs: list[Job] = []
        try:
            for request in requests:
                jobs.append(self._submit_waiting(request))
            return [job.result() for job in jobs]
        except BaseException:
            for job in jobs:
                job.cancel()
            raise

    def _submit_waiting(self, request: GenerationRequest) -> Job:
        while True:
            try:
                return self.submit(request)
            except QueueFull:
                with self._cv:
                    self._cv.wait_for(lambda: len(self._waiting) < self.max_queue or self._stopping, timeout=1.0)

    # ---- the loop -----------------------------------------------------------------------------------
    def _serve(self) -> None:
        self._warm_up()
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._waiting or self._running or self._stopping)
                if self._abort or (self._stopping and not self._waiting and not self._running):
                    break
            try:
                self._iterate()
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the server: fail what ran, go on
                log.exception("batching loop iteration failed")
                for running in list(self._running):
                    self._fail(running, exc, "engine")
        if self.device_lost is not None:
            self._fail_all(DeviceLost(self.device_lost), "engine")

    def _warm_up(self) -> None:
        """Create every engine and run one 1-step generation (binds buffers; captures graphs on a GPU), on the
        loop thread: the thread that will run them (ONNX Runtime's CUDA EP keeps its graphs per thread)."""
        try:
            self.pipeline.engine("unet")
            if self.warmup:
                self.pipeline.generate(warm_up_request(self.pipeline.model))
            self.ready = True
        except Exception as exc:  # noqa: BLE001 - requests report their own errors; /readyz stays false
            self.warmup_error = exc
            log.exception("warm-up failed: the engine serves, but is not reported ready")
            self._check_device(exc)
        finally:
            self._warmed.set()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the loop thread's warm-up ended; re-raise its error (a Ray replica's constructor fails
        the deployment with it). Starts the loop if needed."""
        self.start()
        if not self._warmed.wait(timeout):
            raise TimeoutError(f"warm-up did not finish within {timeout} s")
        if self.warmup_error is not None:
            raise self.warmup_error

    def _iterate(self) -> None:
        self._iteration += 1
        self._expire()
        self._admit()
        self._step()
        self._finish()

    @property
    def row_cap(self) -> int:
        hard = getattr(self.pipeline.engine("unet"), "max_batch", None)
        return min(self.max_batch, hard) if hard else self.max_batch

    def _expire(self) -> None:
        """Drop cancelled and timed-out jobs, waiting or running, at this step boundary."""
        now = time.monotonic()
        with self._cv:
            kept = deque()
            for waiting in self._waiting:
                reason = _stop_reason(waiting.job, now)
                if reason is None:
                    kept.append(waiting)
                else:
                    self._report_failure(waiting.job, waiting.submitted, *reason)
            self._waiting = kept
            self._cv.notify_all()
        for running in list(self._running):
            reason = _stop_reason(running.job, now)
            if reason is not None:
                self._fail(running, *reason)

    def _admit(self) -> None:
        """First come first served per latent size, while the size's rows fit in the cap (a size whose
        next job does not fit admits no later job, so a large job is not overtaken forever)."""
        cap = self.row_cap
        rows_by_size: dict[tuple[int, int], int] = {}
        for running in self._running:
            size = running.generation.size
            rows_by_size[size] = rows_by_size.get(size, 0) + running.generation.rows
        admitted: list[_Waiting] = []
        with self._cv:
            blocked: set[tuple[int, int]] = set()
            for waiting in list(self._waiting):
                used = rows_by_size.get(waiting.size, 0)
                if waiting.size in blocked or (used and used + waiting.rows > cap):
                    blocked.add(waiting.size)
                    continue
                rows_by_size[waiting.size] = used + waiting.rows
                admitted.append(waiting)
                self._waiting.remove(waiting)
            self._cv.notify_all()
        if admitted:
            self._prepare(admitted)

    def _prepare(self, admitted: list[_Waiting]) -> None:
        """Text encoding for the admitted jobs in one run per encoder and LoRA adapter set (adapters may
        change the text encoders), then each job's own start."""
        by_set: dict[tuple, list[_Waiting]] = {}
        for waiting in admitted:
            by_set.setdefault(tuple(waiting.job.request.loras), []).append(waiting)
        for same_set in by_set.values():
            self._prepare_set(same_set)

    def _prepare_set(self, admitted: list[_Waiting]) -> None:
        t0 = time.perf_counter()
        try:
            pipeline = self.pipeline.with_loras(admitted[0].job.request.loras)
            conds = pipeline.conditioning([w.job.request for w in admitted], [w.size for w in admitted])
        except Exception as exc:  # noqa: BLE001
            for waiting in admitted:
                self._report_failure(waiting.job, waiting.submitted, exc, _kind(exc))
            return
        text_seconds = (time.perf_counter() - t0) / len(admitted)
        for waiting, cond in zip(admitted, conds):
            try:
                progress = self._progress_reporter(waiting.job)
                generation = self.pipeline.prepare(waiting.job.request, progress=progress, cond=cond)
            except Exception as exc:  # noqa: BLE001
                self._report_failure(waiting.job, waiting.submitted, exc, _kind(exc))
                continue
            generation.timings.text = text_seconds
            self._admitted += 1
            self._running.append(_Running(waiting.job, generation, waiting.submitted, self._admitted))

    def _progress_reporter(self, job: Job):
        def report(done: int, total: int) -> None:
            job.report(StepEvent(done, total, job.request.batch))
            running = next((r for r in self._running if r.job is job), None)
            now = time.perf_counter()
            if running is not None:
                self._notify("step_done", job, now - running.last_step)
                running.last_step = now
        return report

    def _step(self) -> None:
        """One UNet run for the group whose turn it is."""
        live = [r for r in self._running if not r.generation.done]
        key = self._groups.next(r.generation.group for r in live)
        if key is None:
            return
        members = sorted((r for r in live if r.generation.group == key), key=lambda r: (r.served, r.order))
        # the UNet of the group's LoRA adapter set (a cached set: switching costs a dict lookup on ONNX Runtime,
        # a refit before the run on TensorRT)
        engine = self.pipeline.with_loras(members[0].generation.request.loras).engine("unet")
        self._unets = {k: u for k, u in self._unets.items() if k in self._groups}
        if key not in self._unets or self._unets[key].engine is not engine:
            self._unets[key] = self.pipeline.unet_batch(engine)
        unet = self._unets[key]
        same_run = None if unet.per_row_timestep else (
            lambda a, b: a.generation.call.timestep == b.generation.call.timestep)
        cap = self.row_cap
        batch = pick(members, lambda r: r.generation.rows, cap, same_run)
        gens = [r.generation for r in batch]
        rows = sum(g.rows for g in gens)
        try:
            out, seconds = unet.evaluate(gens, padded_rows(rows, cap) if self.pad_batches else None)
        except Exception as exc:  # noqa: BLE001 - fails this run's jobs only
            log.warning("UNet run of %d rows failed: %s", rows, exc)
            for running in batch:
                self._fail(running, exc, _kind(exc))
            return
        self._notify("unet_batch", rows, seconds)
        offset = 0
        for running in batch:
            running.served = self._iteration
            try:
                running.generation.answer(out[offset:offset + running.generation.rows], seconds)
            except Exception as exc:  # noqa: BLE001 - a sampler error is this job's alone
                self._fail(running, exc, _kind(exc))
            offset += running.generation.rows

    def _finish(self) -> None:
        """Decode finished jobs, batched per latent size up to the row cap, and report their results."""
        done = [r for r in self._running if r.generation.done]
        if not done:
            return
        by_shape: dict[tuple, list[_Running]] = {}
        for running in done:
            by_shape.setdefault(running.generation.latents.shape[1:], []).append(running)
        for group in by_shape.values():
            for batch in _chunks(group, self.max_batch):
                self._decode_and_report(batch)

    def _decode_and_report(self, batch: list[_Running]) -> None:
        latents = [r.generation.latents for r in batch]
        t0 = time.perf_counter()
        try:
            stacked = np.concatenate(latents)
            if not np.isfinite(stacked).all():  # NaN rows are refused by finish(); keep them out of the VAE
                raise _DecodeAlone()
            images = self.pipeline.decode(stacked)
        except _DecodeAlone:
            for running in batch:
                self._report_result(running, None)
            return
        except Exception as exc:  # noqa: BLE001
            for running in batch:
                self._fail(running, exc, _kind(exc))
            return
        seconds = (time.perf_counter() - t0) / len(batch)
        offset = 0
        for running in batch:
            n = len(running.generation.latents)
            running.generation.timings.vae_decode = seconds
            self._report_result(running, [images[offset + i:offset + i + 1] for i in range(n)])
            offset += n

    def _report_result(self, running: _Running, decoded: list[np.ndarray] | None) -> None:
        try:
            result = self.pipeline.finish(running.generation, decoded)
        except Exception as exc:  # noqa: BLE001
            self._fail(running, exc, _kind(exc))
            return
        self._running.remove(running)
        running.job.report(DoneEvent(result))
        seconds = time.monotonic() - running.submitted
        self._job_seconds = 0.8 * self._job_seconds + 0.2 * seconds
        self._notify("job_finished", running.job, "ok", seconds, len(result.images))

    # ---- failures -----------------------------------------------------------------------------------
    def _fail(self, running: _Running, error: BaseException, kind: str) -> None:
        if running in self._running:
            self._running.remove(running)
        running.generation.close()
        self._report_failure(running.job, running.submitted, error, kind)

    def _report_failure(self, job: Job, submitted: float, error: BaseException, kind: str) -> None:
        if kind == "engine":
            self._check_device(error)
        if job.done:
            return
        job.report(FailedEvent(error, kind))
        self._notify("job_finished", job, kind, time.monotonic() - submitted, 0)

    def _check_device(self, error: BaseException) -> None:
        """After a sticky CUDA error every later GPU call fails: stop serving (module doc)."""
        name = sticky_cuda_error(error)
        if name is None or self.device_lost is not None:
            return
        self.device_lost = (f"the GPU reported {name}, a sticky CUDA error after which every GPU call of this "
                            "process fails: restart the server")
        self.ready = False
        log.error("%s", self.device_lost)
        with self._cv:
            self._stopping = self._abort = True
            self._cv.notify_all()
        if self.on_device_lost is not None:
            try:
                self.on_device_lost()
            except Exception:  # noqa: BLE001
                log.exception("on_device_lost failed")

    def _fail_all(self, error: BaseException, kind: str) -> None:
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
            self._cv.notify_all()
        for w in waiting:
            self._report_failure(w.job, w.submitted, error, kind)
        for running in list(self._running):
            self._fail(running, error, kind)

    def _notify(self, hook: str, *args: object) -> None:
        if self.observer is None:
            return
        try:
            getattr(self.observer, hook)(*args)
        except Exception:  # noqa: BLE001 - metrics must never break serving
            log.exception("batch observer %s failed", hook)


class DeviceLost(RuntimeError):
    """The jobs left when the engine stopped after a sticky CUDA error."""


class _DecodeAlone(Exception):
    """A batch with non-finite latents: each job decodes (and is refused) on its own."""


def _stop_reason(job: Job, now: float) -> tuple[BaseException, str] | None:
    if job.cancelled:
        return JobCancelled(f"{job.id} was cancelled"), "cancelled"
    if job.deadline is not None and now >= job.deadline:
        return JobTimedOut(f"{job.id} ran past its time limit"), "timeout"
    return None


def _kind(error: BaseException) -> str:
    return "user" if isinstance(error, UserError) else "engine"


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(size, 1))]


def warm_up_request(model: ModelInfo) -> GenerationRequest:
    """A 1-step request the bundle can run: txt2img, or for an inpainting UNet (which refuses txt2img) an
    inpaint of a grey image with an all-white mask at the bundle's default size."""
    if model.unet_in_channels == model.latent_channels:
        return GenerationRequest("warm-up", steps=1, sampler="euler")
    from PIL import Image

    height, width = model.default_size
    return GenerationRequest("warm-up", steps=1, sampler="euler", init_image=Image.new("RGB", (width, height),
                             (128, 128, 128)), mask=Image.new("L", (width, height), 255))
