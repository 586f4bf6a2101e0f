"""Run the same requests in the exact mode and in a candidate mode, and measure how far the candidate moved.

Both pipelines get identical requests (prompts, seeds, sizes, steps, sampler), so the initial latents and every
noise draw are the same and only the arithmetic differs. This is the one place that does it: `sdrt quality`,
the load-time gates (bf16 on OpenVINO), `sdrt bench --quality` and `sdrt quantize` all call `compare_pipelines`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from ..tinymodel.cell_score import score
from ..tinymodel.shapes import EXAMPLE_CAPTIONS
from .gate import QualitySummary, summarise
from .metrics import ImageComparison, compare_images

Pipeline = GenerationRequest = Any  # sdrt.runtime's classes: this package sits below the runtime, which uses it
# (the bf16 gate), so it names them without importing them; the requests come from
# sdrt.runtime.gate_requests.default_requests
# Built-in model: captions of its world, so adherence can be judged; other models: ordinary prompts.
BUILTIN_PROMPTS = EXAMPLE_CAPTIONS
GENERAL_PROMPTS = (
    "a lighthouse on a cliff at dusk, oil painting",
    "a red sports car on a wet street at night, photo",
    "portrait of an old fisherman, detailed face, soft light",
    "a bowl of fruit on a wooden table, still life",
    "a mountain lake with pine trees, morning fog",
    "a cat sleeping on a windowsill, watercolor",
    "a futuristic city skyline, neon lights",
    "a plate of pasta with basil, food photography",
)


def default_prompts(builtin_model: bool, count: int) -> list[str]:
    pool = BUILTIN_PROMPTS if builtin_model else GENERAL_PROMPTS
    return [pool[i % len(pool)] for i in range(count)]


def compare_pipelines(reference: Pipeline, candidate: Pipeline, requests: Sequence[GenerationRequest],
                      progress: Callable[[int, int], None] | None = None,
                      on_pair: Callable[[int, GenerationRequest, np.ndarray, np.ndarray], None] | None = None,
                      ) -> QualitySummary:
    """Generate every request on both pipelines and compare image by image. Adherence is judged when every
    prompt is a caption of the built-in model's world (the judge can read nothing else). `on_pair(index,
    request, exact, candidate)` sees each pair of images as it is made (`sdrt quality --save`)."""
    if not requests:
        raise ValueError("no requests to compare: give at least one")
    pairs: list[tuple[np.ndarray, np.ndarray, str]] = []
    for n, request in enumerate(requests):
        request = replace(request, batch=1)
        exact = reference.generate(request).images[0]
        cheap = candidate.generate(request).images[0]
        pairs.append((exact, cheap, request.prompt))
        if on_pair is not None:
            on_pair(n, request, exact, cheap)
        if progress is not None:
            progress(n + 1, len(requests))
    comparisons = [_with_adherence(compare_images(exact, cheap), exact, cheap, prompt)
                   for exact, cheap, prompt in pairs]
    if all(c.adheres_exact is not None for c in comparisons):
        exact_score = sum(bool(c.adheres_exact) for c in comparisons) / len(comparisons)
        cheap_score = sum(bool(c.adheres_candidate) for c in comparisons) / len(comparisons)
        return summarise(comparisons, exact_score, cheap_score)
    return summarise(comparisons)


def _with_adherence(comparison: ImageComparison, exact: np.ndarray, cheap: np.ndarray,
                    prompt: str) -> ImageComparison:
    """The judge's "all three match" on both images (sdrt.tinymodel.adherence's `all`), where it can read the
    prompt; the summary's adherence is the fraction of these."""
    exact_score, cheap_score = score(exact, prompt), score(cheap, prompt)
    if exact_score is None or cheap_score is None:
        return comparison
    return replace(comparison, adheres_exact=bool(exact_score["all"]), adheres_candidate=bool(cheap_score["all"]))
