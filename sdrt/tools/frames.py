"""The frames of an interpolation animation (the Python API of `sdrt interpolate`), run as shared batches.

    from sdrt.tools.frames import make_frames
    from sdrt.tools.interpolation import Keyframe
    frames = make_frames(pipe, GenerationRequest("", steps=20), [Keyframe("a red circle", 1),
                                                                  Keyframe("a blue square", 2)], frames=24)

Each frame is the base request (steps, sampler, cfg, size, ...) with the prompt and seed of its segment's
first keyframe, its conditioning and noise interpolated (sdrt.tools.interpolation) and handed to
`Pipeline.prepare` (its `cond` and `noise` arguments), so the runtime runs it like any request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..runtime.parameters import quote
from ..runtime.pipeline import Pipeline
from ..runtime.request import GenerationRequest
from ..runtime.text import Conditioning
from .batch_run import run_together
from .interpolation import (InterpolatedNoise, Keyframe, check_keyframes, frame_positions,
                            interpolate_conditioning)


@dataclass
class Frame:
    image: np.ndarray  # uint8 [H, W, 3]
    parameters: str
    segment: int  # from keyframe `segment` to `segment + 1`
    t: float  # eased position in the segment
    seconds: float


def keyframe_request(base: GenerationRequest, key: Keyframe) -> GenerationRequest:
    """The plain request a keyframe stands for: `sdrt generate` with its prompt, negative and seed."""
    return dataclasses.replace(base, prompt=key.prompt, negative=key.negative, seed=key.seed, batch=1)


def make_frames(pipe: Pipeline, base: GenerationRequest, keyframes: Sequence[Keyframe], frames: int = 24,
                ease: str = "linear", max_rows: int = 8,
                done: Callable[[int, int], None] | None = None) -> list[Frame]:
    check_keyframes(keyframes)
    positions = frame_positions(len(keyframes), frames, ease)
    requests = [keyframe_request(base, key) for key in keyframes]
    sizes = [pipe.check(r)[1] for r in requests]
    if len(set(sizes)) > 1:  # cannot happen from one base request; kept so a mix never slips through
        raise ValueError("keyframes of different sizes")
    conds: list[Conditioning] = []
    for request, size in zip(requests, sizes):  # each alone, exactly as `sdrt generate` encodes it
        same = next((c for r, c in zip(requests, conds) if (r.prompt, r.negative) == (request.prompt,
                                                                                      request.negative)), None)
        conds.append(same or pipe.conditioning([request], [size])[0])
    generations = []
    for segment, t in positions:
        a, b = keyframes[segment], keyframes[segment + 1]
        cond = interpolate_conditioning(conds[segment], conds[segment + 1], t)
        noise = InterpolatedNoise(a.seed, b.seed, t)
        own = requests[segment + 1] if t == 1.0 else requests[segment]  # a keyframe's own request at its frame
        generations.append(pipe.prepare(own, noise=noise, cond=cond))
    count = [0]

    def finished(_: int, __: object) -> None:
        count[0] += 1
        if done is not None:
            done(count[0], len(positions))

    ran = run_together(pipe, generations, max_rows, done=finished)
    out = []
    for (segment, t), r in zip(positions, ran):
        b = keyframes[segment + 1]
        extra = "" if t in (0.0, 1.0) else \
            f", Interpolate to: {quote(b.prompt)}, Interpolate seed: {b.seed}, Interpolate t: {t:.4f}"
        out.append(Frame(r.result.images[0], r.result.parameters[0] + extra, segment, t, r.seconds))
    return out
