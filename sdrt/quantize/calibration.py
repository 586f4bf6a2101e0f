"""Calibration data from the bundle itself: the UNet inputs of real sampler trajectories.

The pipeline's UNet engine is wrapped by one that copies every feed before running it, so the recorded
latents, timesteps, text embeddings (and SDXL's text_embeds / time_ids) are exactly what the UNet sees in
use: CFG on (batch 2), the bundle's default size, several samplers (their step sizes visit different noise
levels) and a built-in prompt list (sdrt.quality.runner's).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..runtime.pipeline import Pipeline

CALIBRATION_SAMPLERS = ("euler", "dpmpp_2m", "euler_a")
CALIBRATION_SEED = 1000  # away from the gate's seeds (0..), so the gate judges trajectories it was not fit on


class RecordingEngine:
    """An Engine that records a copy of every feed and then runs the wrapped engine."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.name, self.inputs, self.outputs = engine.name, engine.inputs, engine.outputs
        self.lock = engine.lock
        self.feeds: list[dict[str, np.ndarray]] = []

    @property
    def providers(self) -> list[str]:
        return self._engine.providers

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append({name: np.array(value, copy=True) for name, value in feeds.items()})
        return self._engine.run(feeds)


def read_prompts(path) -> list[str]:
    """One prompt a line; blank lines and lines starting with # are skipped."""
    from ..errors import UserError

    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --calibration-prompts {path} ({exc}): pass a UTF-8 text file, one prompt "
                        "a line") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"--calibration-prompts {path} holds no prompt: write one prompt a line")
    return prompts


def record_unet_feeds(pipe: "Pipeline", prompts: Sequence[str], steps: int,
                      samplers: Sequence[str] = CALIBRATION_SAMPLERS, cfg: float | None = None,
                      progress: Callable[[int, int], None] | None = None) -> list[dict[str, np.ndarray]]:
    """Run every (prompt, sampler) at the bundle's default size with CFG on and return the UNet feeds."""
    from ..runtime.gate_requests import default_requests
    from ..tinymodel.builtin import DEFAULT_CFG
    from ..tinymodel.cell_score import is_builtin

    cfg = cfg if cfg is not None else (DEFAULT_CFG if is_builtin(pipe.model) else 7.5)
    recorder = RecordingEngine(pipe.engine("unet"))
    pipe.use_engine("unet", recorder)
    try:
        base = default_requests(pipe, prompts, seeds=1, steps=steps, cfg=cfg)
        jobs = [replace(r, sampler=s, seed=CALIBRATION_SEED + n) for n, r in enumerate(base) for s in samplers]
        for n, request in enumerate(jobs):
            pipe.generate(request)
            if progress is not None:
                progress(n + 1, len(jobs))
    finally:
        pipe.use_engine("unet", recorder._engine)
    return recorder.feeds
