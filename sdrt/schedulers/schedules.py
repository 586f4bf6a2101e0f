"""Where the sampler evaluates the model: timestep spacings and sigma schedules.

Each sampler family builds its `Schedule` from these pieces with the quirks of its diffusers counterpart
(see ../shared/reference/samplers.md, section 3); the pieces themselves are shared here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")
SIGMA_SCHEDULES = ("normal", "karras", "exponential", "ays")

# Align Your Steps (Sabour et al. 2024): NVIDIA's published 10-step noise levels, the 11th being sigma_min.
AYS_SIGMAS = {
    "sd1": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "sdxl": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
}


@dataclass(frozen=True)
class Schedule:
    """The points a sampler visits. `timesteps[i]` is what the network is told at step i; `sigmas[i]` the
    VE noise level there (len N+1: sigmas[N] is where sampling ends, 0 or sigma_min)."""

    timesteps: np.ndarray
    sigmas: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def spaced_timesteps(spacing: str, num_points: int, num_train_timesteps: int, steps_offset: int = 0,
                     last_timestep: int | None = None) -> np.ndarray:
    """Descending float64 timesteps with diffusers' `timestep_spacing` semantics (unrounded for linspace).

    DDIM/PNDM/Euler ask for N points; DPM-Solver and UniPC ask for N+1 points and drop the last one.
    """
    T = num_train_timesteps if last_timestep is None else last_timestep
    if spacing == "linspace":
        return np.linspace(0, T - 1, num_points)[::-1].copy()
    if spacing == "leading":
        ratio = T // num_points
        return (np.arange(0, num_points) * ratio).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        ratio = num_train_timesteps / num_points
        return np.arange(T, 0, -ratio).round().astype(np.float64) - 1
    raise ValueError(f"unknown timestep spacing {spacing!r}: use one of {', '.join(SPACINGS)}")


def sigma_to_t(sigma: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timestep for each sigma, interpolating log-sigma between training timesteps (diffusers'
    `_sigma_to_t`). The log of the training sigmas is taken in their own dtype (float32) as diffusers does:
    at sigma_max a float64 log gives t = 999 where diffusers gets 998.9999997, which its int64 cast of the
    exponential schedule's timesteps truncates to 998."""
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigmas = np.log(train_sigmas)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: n levels from sigma_max down to sigma_min (no trailing zero)."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """n levels evenly spaced in log-sigma from sigma_max down to sigma_min (no trailing zero)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def ays_sigmas(model_family: str, n: int) -> np.ndarray:
    """Align Your Steps: the published 11 levels, log-linearly interpolated onto n points (no trailing zero).

    With n = 11 (10 steps) this returns the published table itself.
    """
    key = "sdxl" if model_family == "sdxl" else "sd1"
    levels = np.asarray(AYS_SIGMAS[key], dtype=np.float64)
    if n == len(levels):
        return levels.copy()
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(levels[::-1])
    return np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
