"""Many prepared generations (grid cells, animation frames) run together: those sharing a UNet shape go
through the same engine runs, `max_rows` rows at most per run.

The same `UNetBatch` the serving loop and `Pipeline.generate` use, driven synchronously: each generation
keeps its own sampler, guidance, noise and conditioning, so on ONNX Runtime CPU a generation gives the
same pixels batched as alone (tests/test_interpolate.py checks it bit for bit). Seconds per generation
are its share of its batch's wall time, split by UNet rows x calls, so cells that ran together still show
what each cost (pass `max_rows` equal to one generation's rows for timings of each alone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..runtime.generation import Generation
from ..runtime.pipeline import GenerationResult, Pipeline


@dataclass
class BatchedResult:
    result: GenerationResult
    seconds: float  # this generation's share of its batch's wall time
    batch: int  # index of the batch it ran in (generations of one batch shared UNet runs)


def batches(generations: Sequence[Generation], max_rows: int) -> list[list[int]]:
    """Indices of generations per batch: same UNet group, in the given order, at most `max_rows` rows
    (a generation with more rows than that runs alone)."""
    by_group: dict[tuple, list[list[int]]] = {}
    for index, gen in enumerate(generations):
        if gen.done:  # nothing to run (cannot happen for a fresh generation, kept for safety)
            by_group.setdefault(("done",), [[]])[0].append(index)
            continue
        chunks = by_group.setdefault(gen.group, [[]])
        rows = sum(generations[i].rows for i in chunks[-1])
        if chunks[-1] and rows + gen.rows > max_rows:
            chunks.append([])
        chunks[-1].append(index)
    return [chunk for chunks in by_group.values() for chunk in chunks if chunk]


def run_together(pipe: Pipeline, generations: Sequence[Generation], max_rows: int = 8,
                 done: Callable[[int, BatchedResult], None] | None = None) -> list[BatchedResult]:
    """Run every generation to its result (in the order given); `done(index, result)` as each finishes."""
    results: list[BatchedResult | None] = [None] * len(generations)
    unet = pipe.unet_batch()
    for number, chunk in enumerate(batches(generations, max(max_rows, 1))):
        started = time.perf_counter()
        work = {i: 0 for i in chunk}  # UNet rows x calls per generation
        while True:
            pending = [i for i in chunk if not generations[i].done]
            if not pending:
                break
            for i in pending:
                work[i] += generations[i].rows
            unet.run([generations[i] for i in pending])
        finished = [pipe.finish(generations[i]) for i in chunk]
        wall, total = time.perf_counter() - started, max(sum(work.values()), 1)
        for i, result in zip(chunk, finished):
            results[i] = BatchedResult(result, wall * work[i] / total, number)
            if done is not None:
                done(i, results[i])
    return [r for r in results if r is not None]
