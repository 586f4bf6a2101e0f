"""Conversions between what a network predicts (epsilon, v or the clean sample) and what a sampler uses.

All in variance-preserving terms: x_t = a * x0 + s * eps with a = sqrt(abar), s = sqrt(1 - abar). For an
epsilon model `to_eps` returns its input untouched, so the common case costs nothing per step.
"""

from __future__ import annotations

import math

import numpy as np


def to_eps(output: np.ndarray, x: np.ndarray, alpha_bar: float, prediction_type: str) -> np.ndarray:
    """The noise estimate eps for a network output at latents `x` (VP scale) and noise level `alpha_bar`."""
    if prediction_type == "epsilon":
        return output
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "v_prediction":
        return a * output + s * x
    if prediction_type == "sample":
        return (x - a * output) / s
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def to_x0(output: np.ndarray, x: np.ndarray, alpha_bar: float, prediction_type: str) -> np.ndarray:
    """The clean-sample estimate x0 for a network output at latents `x` (VP scale) and `alpha_bar`."""
    if prediction_type == "sample":
        return output
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "epsilon":
        return (x - s * output) / a
    if prediction_type == "v_prediction":
        return a * x - s * output
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def from_eps(eps: np.ndarray, x: np.ndarray, alpha_bar: float, prediction_type: str) -> np.ndarray:
    """The network output that corresponds to the noise estimate `eps` (inverse of `to_eps`)."""
    if prediction_type == "epsilon":
        return eps
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "v_prediction":
        # v = a*eps - s*x0 and x0 = (x - s*eps)/a  =>  v = (eps - s*x) / a
        return (eps - s * x) / a
    if prediction_type == "sample":
        return (x - s * eps) / a
    raise ValueError(f"unknown prediction_type {prediction_type!r}")
