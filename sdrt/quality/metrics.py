"""Per-image distances between a reference image and a candidate, both uint8 [H, W, 3] (or [H, W]).

All figures are on the 0..255 scale the user sees: PSNR with peak 255, max and mean absolute difference in
levels. SSIM is scikit-image's (`pip install 'sdrt[quality]'`); without it the figure is None and nothing
gates on it, so the runtime's load-time gates need no extra dependency.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

PEAK = 255.0


def _pair(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"images differ in shape: {reference.shape} vs {candidate.shape}; compare images "
                         "generated at the same size")
    return reference.astype(np.float64), candidate.astype(np.float64)


def psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    """10 log10(255^2 / MSE) in dB; identical images give +inf."""
    ref, cand = _pair(reference, candidate)
    mse = float(np.mean((ref - cand) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(PEAK * PEAK / mse)


def pixel_difference(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max, mean) absolute difference in 0..255 levels over every pixel and channel."""
    ref, cand = _pair(reference, candidate)
    diff = np.abs(ref - cand)
    return float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0


def ssim(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """scikit-image's SSIM (7x7 window, channels averaged), or None where scikit-image is not installed or
    the image is smaller than the window."""
    try:
        from skimage.metrics import structural_similarity  # noqa: PLC0415  (optional: the [quality] extra)
    except ImportError:
        return None
    ref, cand = _pair(reference, candidate)
    if min(ref.shape[:2]) < 7:
        return None
    channel_axis = 2 if ref.ndim == 3 else None
    return float(structural_similarity(ref, cand, data_range=PEAK, channel_axis=channel_axis))


@dataclass(frozen=True)
class ImageComparison:
    """One candidate image against its reference."""

    psnr_db: float  # +inf when identical
    max_diff: float  # levels, 0..255
    mean_diff: float
    ssim: float | None  # None without scikit-image
    # Built-in model only: whether the judge (sdrt.tinymodel.adherence) finds the prompt's shape, colour and
    # background in the exact image and in the candidate; None where the prompt is no caption of its world.
    adheres_exact: bool | None = None
    adheres_candidate: bool | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["psnr_db"] = None if math.isinf(self.psnr_db) else self.psnr_db  # JSON has no inf; None = identical
        return out


def compare_images(reference: np.ndarray, candidate: np.ndarray) -> ImageComparison:
    high, mean = pixel_difference(reference, candidate)
    return ImageComparison(psnr(reference, candidate), high, mean, ssim(reference, candidate))
