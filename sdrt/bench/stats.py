"""Per-run records and their summary: median and p90 over the timed runs, per stage and per step.

p90 is numpy's linear-interpolation percentile, so with few runs it lies between the two slowest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

STAGES = ("text_encoding", "prepare_latents", "denoising", "unet_engine", "host_overhead", "vae_decode", "other",
          "end_to_end")


@dataclass(frozen=True)
class StepTime:
    engine: float  # seconds in the UNet engine during this step
    host: float  # the rest of the step: sampler, guidance, copies


@dataclass
class RunRecord:
    """Seconds per stage of one generation."""

    end_to_end: float
    text_encoding: float  # tokenization + text encoder(s)
    text_engine: float  # of which inside the text encoder engine(s)
    prepare_latents: float  # initial latents; the VAE encode too for img2img (the pipeline's `vae_encode`)
    denoising: float
    vae_decode: float
    unet_calls: int
    steps: list[StepTime] = field(default_factory=list)

    @property
    def unet_engine(self) -> float:
        return sum(s.engine for s in self.steps)

    @property
    def host_overhead(self) -> float:
        return sum(s.host for s in self.steps)

    @property
    def other(self) -> float:
        """Request checks, noise, image conversion: what no stage above covers."""
        return max(self.end_to_end - self.text_encoding - self.prepare_latents - self.denoising - self.vae_decode, 0.0)

    def stage(self, name: str) -> float:
        return float(getattr(self, name))

    def to_json(self) -> dict[str, Any]:
        out = {f"{name}_s": self.stage(name) for name in STAGES}
        out["text_engine_s"] = self.text_engine
        out["unet_calls"] = self.unet_calls
        out["steps"] = [asdict(s) for s in self.steps]
        return out


@dataclass(frozen=True)
class Spread:
    median: float
    p90: float

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        if not values:
            return cls(float("nan"), float("nan"))
        array = np.asarray(values, dtype=np.float64)
        return cls(float(np.median(array)), float(np.percentile(array, 90)))

    def to_json(self) -> dict[str, float]:
        return {"median_s": self.median, "p90_s": self.p90}


@dataclass
class Report:
    """Everything `sdrt bench` prints, writes as JSON and draws."""

    settings: dict[str, Any]  # bundle, backend, providers, steps, sampler, size, ...
    runs: list[RunRecord]
    stages: dict[str, Spread]
    step_engine: Spread  # over every step of every run
    step_host: Spread
    timeline: list[tuple[Spread, Spread]]  # per step index: (engine, host) over the runs
    images_per_s: float
    peak_rss_bytes: int | None
    peak_vram_bytes: int | None
    peak_vram_source: str  # how VRAM was measured, or why it was not ("n/a (CPU)")
    quality: dict[str, Any] | None = None  # `--quality`: the yardstick against exact (sdrt.bench.quality_report)


def summarize(runs: list[RunRecord], settings: dict[str, Any], batch: int, peak_rss_bytes: int | None,
              peak_vram_bytes: int | None, peak_vram_source: str) -> Report:
    stages = {name: Spread.of([r.stage(name) for r in runs]) for name in STAGES}
    every_step = [s for r in runs for s in r.steps]
    length = min((len(r.steps) for r in runs), default=0)
    timeline = [(Spread.of([r.steps[i].engine for r in runs]), Spread.of([r.steps[i].host for r in runs]))
                for i in range(length)]
    median_total = stages["end_to_end"].median
    return Report(
        settings=settings, runs=runs, stages=stages,
        step_engine=Spread.of([s.engine for s in every_step]), step_host=Spread.of([s.host for s in every_step]),
        timeline=timeline, images_per_s=batch / median_total if median_total > 0 else float("nan"),
        peak_rss_bytes=peak_rss_bytes, peak_vram_bytes=peak_vram_bytes, peak_vram_source=peak_vram_source,
    )
