"""The gate every non-exact mode passes before sdrt uses it on its own (`auto`) or ships it (`sdrt quantize`).

Stated once, here, and used by `sdrt quality`, the load-time gates and the bench:
- median PSNR >= 30 dB and worst PSNR >= 25 dB against the exact fp32 images of the same requests (same seeds,
  latents and noise);
- on the built-in model, prompt adherence (sdrt.tinymodel.adherence, the fraction of images whose shape,
  colour and background all match) within 2 points (0.02) of exact.
Why these numbers: docs/quality.md (30 dB is about 8/255 RMS: differences that are visible only side by side;
25 dB bounds the single worst image so one broken prompt cannot hide behind a good median).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Sequence

from .metrics import ImageComparison


@dataclass(frozen=True)
class Gate:
    median_psnr_db: float = 30.0
    worst_psnr_db: float = 25.0
    adherence_points: float = 0.02  # largest allowed drop of the adherence fraction ("all" matches)

    def as_dict(self) -> dict:
        return {"median_psnr_db": self.median_psnr_db, "worst_psnr_db": self.worst_psnr_db,
                "adherence_points": self.adherence_points}


GATE = Gate()


@dataclass
class QualitySummary:
    """The yardstick's figures over a set of requests (per image and summarised)."""

    images: list[ImageComparison]
    median_psnr_db: float
    worst_psnr_db: float
    max_diff: float
    mean_diff: float
    median_ssim: float | None
    adherence_exact: float | None = None  # built-in model only
    adherence_candidate: float | None = None

    def as_dict(self) -> dict:
        finite = lambda v: None if v is not None and math.isinf(v) else v  # noqa: E731  (JSON has no inf)
        return {"median_psnr_db": finite(self.median_psnr_db), "worst_psnr_db": finite(self.worst_psnr_db),
                "identical": math.isinf(self.worst_psnr_db), "max_diff": self.max_diff,
                "mean_diff": self.mean_diff, "median_ssim": self.median_ssim,
                "adherence_exact": self.adherence_exact, "adherence_candidate": self.adherence_candidate,
                "images": [c.as_dict() for c in self.images]}


def summarise(images: Sequence[ImageComparison], adherence_exact: float | None = None,
              adherence_candidate: float | None = None) -> QualitySummary:
    if not images:
        raise ValueError("no images to summarise: compare at least one request")
    ssims = [c.ssim for c in images if c.ssim is not None]
    return QualitySummary(list(images), statistics.median(c.psnr_db for c in images),
                          min(c.psnr_db for c in images), max(c.max_diff for c in images),
                          statistics.fmean(c.mean_diff for c in images),
                          statistics.median(ssims) if ssims else None, adherence_exact, adherence_candidate)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    failures: list[str] = field(default_factory=list)  # one phrase per missed threshold

    def line(self, mode: str) -> str:
        """`mode` as the user names it, e.g. 'bf16 on OpenVINO' or 'int8 UNet'."""
        if self.passed:
            return f"{mode} passed the quality gate"
        return f"{mode} failed the quality gate: {'; '.join(self.failures)}"


def verdict(summary: QualitySummary, gate: Gate | None = None) -> Verdict:
    """Against `gate`, or the module's GATE at call time (one place to change, tests included)."""
    gate = gate or GATE
    failures = []
    if summary.median_psnr_db < gate.median_psnr_db:
        failures.append(f"median PSNR {summary.median_psnr_db:.2f} dB < {gate.median_psnr_db:g} dB")
    if summary.worst_psnr_db < gate.worst_psnr_db:
        failures.append(f"worst PSNR {summary.worst_psnr_db:.2f} dB < {gate.worst_psnr_db:g} dB")
    if summary.adherence_exact is not None and summary.adherence_candidate is not None:
        drop = summary.adherence_exact - summary.adherence_candidate
        if drop > gate.adherence_points + 1e-12:
            failures.append(f"adherence {summary.adherence_candidate:.3f} vs {summary.adherence_exact:.3f} exact "
                            f"(drop {drop:.3f} > {gate.adherence_points:g})")
    return Verdict(not failures, failures)
