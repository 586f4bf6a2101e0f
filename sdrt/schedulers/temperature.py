"""Sampling temperature: Temporal Score Rescaling (TSR, Xu et al. 2025) and Constant Noise Scaling (CNS).

The user sets a temperature T; the inverse temperature k = 1/T is what the formulas use. T < 1 sharpens,
T > 1 flattens. TSR rescales the model's noise estimate by r(t) = (s^2 + sigma_t^2) / (s^2/k + sigma_t^2)
(sigma_t the VE noise level, s the data-scale hyperparameter), which tempers each mode of the data
distribution while keeping mode weights. CNS, the baseline, divides the initial and injected noise by sqrt(k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .prediction import from_eps, to_eps

METHODS = ("tsr", "cns")


def tsr_ratio(alpha_bar: float, k: float, sigma: float) -> float:
    """r(t) for TSR at noise level alpha_bar (VP), inverse temperature k and data scale sigma."""
    s2 = sigma * sigma
    return (alpha_bar * s2 + 1.0 - alpha_bar) / (alpha_bar * s2 / k + 1.0 - alpha_bar)


@dataclass(frozen=True)
class Temperature:
    """A sampling temperature T (k = 1/T) and how to apply it."""

    value: float = 1.0
    method: str = "tsr"
    sigma: float = 1.0  # TSR only: the data scale; smaller values steer later in sampling

    def __post_init__(self) -> None:
        if not (self.value > 0 and math.isfinite(self.value)):
            raise ValueError(f"temperature must be a positive number, got {self.value}: use e.g. 0.8 or 1.2")
        if self.method not in METHODS:
            raise ValueError(f"unknown temperature method {self.method!r}: use one of {', '.join(METHODS)}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"TSR sigma must be a positive number, got {self.sigma}")

    @property
    def k(self) -> float:
        return 1.0 / self.value

    @property
    def is_identity(self) -> bool:
        return self.value == 1.0

    def rescale_output(
        self, output: np.ndarray, x: np.ndarray, alpha_bar: float, prediction_type: str
    ) -> np.ndarray:
        """TSR on a (guided) network output: scale its eps by r(t), returned in the model's own parameterization."""
        if self.method != "tsr" or self.is_identity:
            return output
        r = tsr_ratio(alpha_bar, self.k, self.sigma)
        if r == 1.0:
            return output
        if prediction_type == "epsilon":
            return output * np.float32(r)
        eps = to_eps(output, x, alpha_bar, prediction_type)
        return from_eps(eps * np.float32(r), x, alpha_bar, prediction_type).astype(output.dtype, copy=False)

    @property
    def noise_scale(self) -> float:
        """CNS factor on the initial and every injected noise (1 for TSR)."""
        if self.method != "cns" or self.is_identity:
            return 1.0
        return 1.0 / math.sqrt(self.k)
