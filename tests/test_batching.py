"""The step-level batching loop (sdrt.serving.batcher) on the tiny SD1 bundle with real ONNX Runtime engines.

Parity: a request generated inside a mixed batch (other samplers, sizes, CFG, temperatures, img2img and
inpainting, a job that joins mid-way) gives the image it gives alone, within 2/255. Join, cancel and
failure points are made deterministic by acting from the observer, which runs on the loop thread between
UNet runs.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from sdrt.errors import UserError
from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.serving.batcher import BatchingEngine
from sdrt.serving.groups import PAD_SIZES, RoundRobin, padded_rows, pick
from sdrt.serving.jobs import DoneEvent, EngineStopping, FailedEvent, JobCancelled, JobTimedOut, QueueFull, StepEvent


class Recorder:
    """BatchObserver that records UNet batch rows and finished jobs, and runs actions before given runs."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.finished: list[tuple[str, str, int]] = []
        self.steps: list[str] = []
        self.before: dict[int, callable] = {}  # after the n-th UNet run: action()

    def unet_batch(self, rows: int, seconds: float) -> None:
        self.batches.append(rows)
        action = self.before.pop(len(self.batches), None)
        if action is not None:
            action()

    def step_done(self, job, seconds: float) -> None:
        assert seconds >= 0.0
        self.steps.append(job.id)

    def job_finished(self, job, outcome: str, seconds: float, images: int) -> None:
        self.finished.append((job.id, outcome, images))


class UNetStandIn:
    """The real ORT UNet behind the Engine interface, recording each run's batch and timesteps; it can raise
    once (on the first run of latent size `fail_size` after `fail_after` runs), take one scalar timestep
    per run as an older export would, or claim a TensorRT-like profile cap (`max_batch`)."""

    def __init__(self, inner, fail_size=None, fail_after=0, scalar_timestep=False, max_batch=None) -> None:
        self.inner, self.name, self.lock = inner, inner.name, threading.RLock()
        self.inputs, self.outputs = dict(inner.inputs), inner.outputs
        self.scalar_timestep = scalar_timestep
        if scalar_timestep:
            from sdrt.backends.engine import IOSpec

            self.inputs["timestep"] = IOSpec("timestep", np.dtype(np.float32), ())
        if max_batch is not None:
            self.max_batch = max_batch
        self.fail_size, self.fail_after, self.failed = fail_size, fail_after, False
        self.runs: list[tuple[int, tuple, int]] = []  # (rows, latent size, distinct timesteps)

    @property
    def providers(self):
        return self.inner.providers

    def run(self, feeds):
        sample, timestep = feeds["sample"], np.asarray(feeds["timestep"])
        self.runs.append((sample.shape[0], sample.shape[2:], len(np.unique(timestep))))
        if (not self.failed and self.fail_size == sample.shape[2:]
                and len(self.runs) > self.fail_after):
            self.failed = True
            # out of memory fails one run; an illegal address would be sticky (test_trt_pipeline.py)
            raise RuntimeError("CUDA error: out of memory (cudaErrorMemoryAllocation)")
        if self.scalar_timestep:
            assert timestep.shape == ()
            feeds = {**feeds, "timestep": np.full(sample.shape[0], timestep, np.float32)}
        return self.inner.run(feeds)


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.load(str(tiny_bundle("sd1")))


def _image(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "L":
        return Image.fromarray(np.where(rng.random((height, width)) > 0.5, 255, 0).astype(np.uint8))
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _same_image(batched, alone) -> None:
    assert batched.seeds == alone.seeds
    assert batched.parameters == alone.parameters
    for a, b in zip(batched.images, alone.images):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def _stand_in(pipe, **kwargs) -> UNetStandIn:
    real = pipe._engines["unet"]
    real = getattr(real, "inner", real)
    stand_in = UNetStandIn(real, **kwargs)
    pipe._engines["unet"] = stand_in
    return stand_in


@pytest.fixture
def unet(pipe):
    real = pipe.engine("unet")
    yield lambda **kwargs: _stand_in(pipe, **kwargs)
    pipe._engines["unet"] = real


MIXED = [
    GenerationRequest("a red cube", steps=12, sampler="euler", seed=1, cfg=7.0, width=64, height=64),
    GenerationRequest("a blue ball", steps=5, sampler="dpmpp_2m", schedule="karras", seed=2, cfg=1.0,
                      width=64, height=64),
    GenerationRequest("a green cone", steps=6, sampler="euler_a", seed=3, cfg=5.0, temperature=0.8,
                      width=64, height=64),
    GenerationRequest("two cubes", steps=4, sampler="ddim", seed=4, cfg=6.0, batch=2, width=32, height=48),
    GenerationRequest("a cube, painted", steps=6, sampler="euler", seed=5, cfg=7.0, init_image=_image(0, 64, 64),
                      strength=0.6, guidance_rescale=0.5),
    GenerationRequest("a door", steps=5, sampler="dpmpp_2m_sde", seed=6, cfg=4.0, init_image=_image(1, 64, 64),
                      mask=_image(2, 64, 64, "L")),
]
JOINER = GenerationRequest("a late star", steps=3, sampler="heun", seed=7, cfg=7.5, width=64, height=64)


def test_a_mixed_batch_gives_each_request_its_image_alone(pipe) -> None:
    alone = [pipe.generate(r) for r in MIXED + [JOINER]]
    recorder = Recorder()
    engine = BatchingEngine(pipe, max_batch=16, observer=recorder, warmup=False)
    jobs, joined = [], {}

    def join() -> None:  # on the loop thread after the 3rd UNet run: the first job is mid-way
        joined["first job done"] = jobs[0].done
        joined["steps"] = recorder.steps.count(jobs[0].id)
        jobs.append(engine.submit(JOINER))

    recorder.before[3] = join
    jobs.extend(engine.submit(r) for r in MIXED)
    with engine:
        results = [job.result(timeout=120) for job in jobs[:len(MIXED)]] + [jobs[-1].result(timeout=120)]
    for batched, single in zip(results, alone):
        _same_image(batched, single)
    assert joined == {"first job done": False, "steps": 1}
    order = [job_id for job_id, _, _ in recorder.finished]
    assert order.index(jobs[-1].id) < order.index(jobs[0].id)  # the joiner did not wait for the first job
    # rows of one run: all 64x64 jobs together (2 + 1 + 2 + 2 + 2 = 9 before any finished)
    assert max(recorder.batches) >= 9
    assert [outcome for _, outcome, _ in recorder.finished] == ["ok"] * 7


def test_step_events_count_every_step_and_end_with_the_result(pipe) -> None:
    with BatchingEngine(pipe, warmup=False) as engine:
        job = engine.submit(GenerationRequest("a cube", steps=4, sampler="heun", seed=1, width=32, height=32))
        events = []
        while not events or not isinstance(events[-1], (DoneEvent, FailedEvent)):
            events.append(job.next_event(timeout=60))
    assert [(e.step, e.total, e.images) for e in events[:-1]] == [(1, 4, 1), (2, 4, 1), (3, 4, 1), (4, 4, 1)]
    assert isinstance(events[-1], DoneEvent) and len(events[-1].result.images) == 1
    assert all(isinstance(e, StepEvent) for e in events[:-1])


def test_generate_many_returns_results_in_order_equal_to_sequential_generate(pipe) -> None:
    requests = [GenerationRequest(f"shape {i}", steps=3, sampler=("euler", "dpmpp_2m", "euler_a")[i % 3],
                                  seed=20 + i, cfg=(7.0, 1.0)[i % 2], width=(64, 32)[i % 2], height=64)
                for i in range(6)]
    sequential = [pipe.generate(r) for r in requests]
    recorder = Recorder()
    with BatchingEngine(pipe, max_batch=8, observer=recorder, warmup=False) as engine:
        batched = engine.generate_many(requests)
    assert [r.seeds for r in batched] == [[20 + i] for i in range(6)]
    for b, s in zip(batched, sequential):
        _same_image(b, s)
    assert max(recorder.batches) > 2  # jobs overlapped: more than one job's rows in a run


def test_cancelling_a_job_frees_its_rows_for_the_next_run(pipe) -> None:
    recorder = Recorder()
    engine = BatchingEngine(pipe, observer=recorder, warmup=False)
    keep = engine.submit(GenerationRequest("kept", steps=6, seed=1, cfg=7.0, width=64, height=64))
    drop = engine.submit(GenerationRequest("dropped", steps=6, seed=2, cfg=7.0, width=64, height=64))
    recorder.before[2] = drop.cancel
    with engine:
        assert keep.result(timeout=60).images
        with pytest.raises(JobCancelled):
            drop.result(timeout=60)
    assert recorder.batches == [4, 4, 2, 2, 2, 2]
    assert (drop.id, "cancelled", 0) in recorder.finished
    events = []
    while (event := drop.next_event(timeout=0)) is not None:
        events.append(event)
    assert isinstance(events[-1], FailedEvent) and events[-1].kind == "cancelled"


def test_a_deadline_stops_the_job_with_timeout(pipe) -> None:
    with BatchingEngine(pipe, warmup=False) as engine:
        job = engine.submit(GenerationRequest("late", steps=3, width=32, height=32), timeout=0.0)
        with pytest.raises(JobTimedOut):
            job.result(timeout=60)
        assert engine.submit(GenerationRequest("on time", steps=2, width=32, height=32)).result(timeout=60)


def test_an_engine_error_fails_only_the_jobs_of_that_run(pipe, unet) -> None:
    stand_in = unet(fail_size=(8, 8), fail_after=1)  # the 2nd run of a 64x64 group raises
    recorder = Recorder()
    engine = BatchingEngine(pipe, observer=recorder, warmup=False)
    a = engine.submit(GenerationRequest("a", steps=4, seed=1, width=64, height=64))
    b = engine.submit(GenerationRequest("b", steps=4, seed=2, cfg=1.0, width=64, height=64))
    other = engine.submit(GenerationRequest("c", steps=4, seed=3, width=32, height=32))
    with engine:
        for job in (a, b):
            with pytest.raises(RuntimeError, match="out of memory"):
                job.result(timeout=60)
        assert other.result(timeout=60).images  # another group, another run: untouched
        later = engine.submit(GenerationRequest("d", steps=3, seed=4, width=64, height=64))
        assert later.result(timeout=60).images  # the loop keeps serving
    assert stand_in.failed
    outcomes = {job_id: outcome for job_id, outcome, _ in recorder.finished}
    assert outcomes == {a.id: "engine", b.id: "engine", other.id: "ok", later.id: "ok"}


def test_a_full_queue_refuses_with_retry_after(pipe) -> None:
    engine = BatchingEngine(pipe, max_queue=2, warmup=False)  # not started: nothing leaves the queue
    jobs = [engine.submit(GenerationRequest("x", steps=2, width=32, height=32)) for _ in range(2)]
    assert engine.queue_depth == 2
    with pytest.raises(QueueFull, match=r"^2 requests are already waiting \(max queue 2\): retry after \d+ s$") as info:
        engine.submit(GenerationRequest("y", steps=2, width=32, height=32))
    assert info.value.retry_after >= 1
    engine.close()
    for job in jobs:
        with pytest.raises(JobCancelled):
            job.result(timeout=5)


def test_bad_requests_are_refused_at_submit(pipe) -> None:
    engine = BatchingEngine(pipe, warmup=False)
    with pytest.raises(UserError, match="^width 30 is not a multiple of 8"):
        engine.submit(GenerationRequest("x", width=30, height=32))
    assert engine.queue_depth == 0
    engine.close()


def test_drain_finishes_in_flight_jobs_then_refuses_new_ones(pipe) -> None:
    engine = BatchingEngine(pipe, warmup=False).start()
    jobs = [engine.submit(GenerationRequest(f"j{i}", steps=4, seed=i, width=32, height=32)) for i in range(3)]
    engine.drain(timeout=120)
    assert all(job.done for job in jobs)
    assert all(job.result(timeout=0).images for job in jobs)
    with pytest.raises(EngineStopping):
        engine.submit(GenerationRequest("late", steps=2, width=32, height=32))
    assert engine.active == 0 and engine.queue_depth == 0


def test_warm_up_makes_the_engine_ready(pipe) -> None:
    engine = BatchingEngine(pipe, warmup=True)
    assert not engine.ready
    with engine:
        engine.generate_many([GenerationRequest("x", steps=1, width=32, height=32)])  # served after warm-up
        assert engine.ready


def test_a_scalar_timestep_unet_batches_only_equal_timesteps(pipe, unet) -> None:
    """An older export with one timestep per run: jobs at different timesteps run apart, results unchanged."""
    requests = [GenerationRequest("a", steps=4, seed=1, width=32, height=32),
                GenerationRequest("b", steps=4, seed=2, width=32, height=32),
                GenerationRequest("c", steps=3, seed=3, width=32, height=32)]
    alone = [pipe.generate(r) for r in requests]
    stand_in = unet(scalar_timestep=True)
    with BatchingEngine(pipe, warmup=False) as engine:
        batched = engine.generate_many(requests)
    for b, s in zip(batched, alone):
        _same_image(b, s)
    assert {distinct for _, _, distinct in stand_in.runs} == {1}
    rows = [rows for rows, _, _ in stand_in.runs]
    assert max(rows) >= 4 and min(rows) == 2  # a and b share their timesteps; c (3 steps) mostly runs apart


def test_padding_and_the_engine_profile_cap(pipe, unet) -> None:
    """pad_batches (what GPU backends do) pads runs to fixed sizes; an engine's max_batch caps the rows."""
    requests = [GenerationRequest(f"p{i}", steps=2, seed=i, cfg=(7.0, 1.0, 1.0)[i % 3], width=32, height=32)
                for i in range(5)]
    alone = [pipe.generate(r) for r in requests]
    stand_in = unet()
    with BatchingEngine(pipe, max_batch=8, pad_batches=True, warmup=False) as engine:
        padded = engine.generate_many(requests)
    assert {rows for rows, _, _ in stand_in.runs} <= set(PAD_SIZES)
    assert any(rows == 8 for rows, _, _ in stand_in.runs)  # 2 + 1 + 1 + 2 + 1 = 7 rows, padded to 8
    capped_unet = unet(max_batch=2)
    recorder = Recorder()
    with BatchingEngine(pipe, max_batch=8, observer=recorder, warmup=False) as engine:
        capped = engine.generate_many(requests)
    assert max(rows for rows, _, _ in capped_unet.runs) == 2
    for results in (padded, capped):
        for b, s in zip(results, alone):
            _same_image(b, s)


def test_scheduling_rules() -> None:
    assert [padded_rows(n, 16) for n in (1, 2, 3, 5, 9, 16, 20)] == [1, 2, 4, 8, 16, 16, 20]
    assert padded_rows(5, 6) == 6
    rows = {"a": 4, "b": 3, "c": 2, "d": 1}
    assert pick(list("abcd"), rows.get, 6) == ["a", "c"]
    assert pick(list("bacd"), rows.get, 6) == ["b", "c", "d"]
    assert pick(["a"], rows.get, 2) == ["a"]  # a job's rows are never split: it runs alone
    ring = RoundRobin()
    assert [ring.next(keys) for keys in ("xy", "xy", "xyz", "xyz", "xyz", "z")] == ["x", "y", "x", "y", "z", "z"]


def test_sdxl_jobs_batch_with_their_own_pooled_embeddings_and_time_ids(tiny_bundle) -> None:
    pipe = Pipeline.load(str(tiny_bundle("sdxl")))
    requests = [GenerationRequest("a red cube", negative="blurry", steps=3, seed=1, cfg=5.0, width=64, height=64),
                GenerationRequest("a blue ball", steps=3, sampler="dpmpp_2m", seed=2, cfg=1.0, width=64, height=64),
                GenerationRequest("a green cone", steps=3, seed=3, cfg=7.0, width=64, height=64),
                GenerationRequest("a small cube", steps=3, seed=4, cfg=7.0, width=32, height=48)]
    alone = [pipe.generate(r) for r in requests]
    recorder = Recorder()
    with BatchingEngine(pipe, observer=recorder, warmup=False) as engine:
        batched = engine.generate_many(requests)
    for b, s in zip(batched, alone):
        _same_image(b, s)
    assert max(recorder.batches) == 5  # the three 64x64 jobs in one run: 2 + 1 + 2 rows


def test_a_long_prompt_forms_its_own_group(pipe) -> None:
    """More than 75 tokens: two text windows, a longer text input, so it cannot share a UNet run."""
    long_prompt = " ".join(["a very detailed red cube on a table"] * 12)
    requests = [GenerationRequest(long_prompt, steps=3, seed=1, width=32, height=32),
                GenerationRequest("short", steps=3, seed=2, width=32, height=32)]
    alone = [pipe.generate(r) for r in requests]
    recorder = Recorder()
    with BatchingEngine(pipe, observer=recorder, warmup=False) as engine:
        batched = engine.generate_many(requests)
    for b, s in zip(batched, alone):
        _same_image(b, s)
    assert recorder.batches == [2] * 6  # two groups taking turns, 3 runs each
