"""The training noise schedule of a diffusion model: betas, alphas_cumprod and the sigmas derived from them.

Computed in float32 the way diffusers computes it, because our samplers are judged by how closely they
reproduce diffusers and a one-ulp difference in alphas_cumprod shows up in the final latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float32), reproduced bit for bit.

    torch fills the first half forward from `start` and the second half backward from `end`, with a float32
    step and a fused multiply-add (emulated here by one rounding from float64).
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
    idx = np.arange(steps, dtype=np.float64)
    forward = np.float64(start32) + step * idx
    backward = np.float64(end32) - step * (steps - 1 - idx)
    return np.where(idx < steps // 2, forward, backward).astype(np.float32)


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return np.array(betas, dtype=np.float32)


def _cumprod_f32(values: np.ndarray) -> np.ndarray:
    """torch.cumprod on CPU accumulates float32 in float64; so do we, for bit-equal alphas_cumprod."""
    return np.cumprod(values.astype(np.float64)).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Algorithm 1: shift sqrt(alphas_cumprod) so the last step has SNR 0."""
    alphas_bar_sqrt = np.sqrt(_cumprod_f32(1.0 - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = (alphas_bar_sqrt**2).astype(np.float32)
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1 - alphas).astype(np.float32)


@dataclass(frozen=True)
class NoiseSchedule:
    """What the model was trained with; everything a sampler needs to know about the model besides its output.

    `from_config` reads a diffusers scheduler_config.json, so a bundle's scheduler.json maps onto it directly.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    rescale_betas_zero_snr: bool = False
    steps_offset: int = 1
    timestep_spacing: str | None = None  # None: each sampler's diffusers default
    trained_betas: tuple[float, ...] | None = None
    # How DDIM / DDPM / LCM treat x0 and where DDIM / PLMS end (see scheduler_config.py). None: the config did
    # not say, so each sampler takes its diffusers class's default, as <Scheduler>.from_config(config) does.
    # Built directly, a NoiseSchedule clips nothing and ends on alphas_cumprod[0] (SD's published configs).
    clip_sample: bool | None = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool | None = False
    betas: np.ndarray = field(init=False, repr=False, compare=False)
    alphas_cumprod: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {self.prediction_type!r}: use one of {', '.join(PREDICTION_TYPES)}"
            )
        n = self.num_train_timesteps
        if self.trained_betas is not None:
            betas = np.asarray(self.trained_betas, dtype=np.float32)
        elif self.beta_schedule == "linear":
            betas = _linspace_f32(self.beta_start, self.beta_end, n)
        elif self.beta_schedule == "scaled_linear":
            betas = (_linspace_f32(self.beta_start**0.5, self.beta_end**0.5, n) ** 2).astype(np.float32)
        elif self.beta_schedule == "squaredcos_cap_v2":
            betas = _cosine_betas(n)
        else:
            raise ValueError(
                f"unknown beta_schedule {self.beta_schedule!r}: use one of {', '.join(BETA_SCHEDULES)}"
            )
        if self.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas_cumprod = _cumprod_f32(1.0 - betas)
        for name, value in (("betas", betas), ("alphas_cumprod", alphas_cumprod)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "NoiseSchedule":
        """Build from a diffusers scheduler config (any scheduler class). Keys listed in `_use_default_values`
        count as absent, as in diffusers. Other keys are not read here: `scheduler_config.check_scheduler_config`
        refuses those that would change results."""
        known = {
            "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
            "rescale_betas_zero_snr", "steps_offset", "timestep_spacing", "trained_betas", "clip_sample",
            "clip_sample_range", "set_alpha_to_one",
        }
        defaulted = config.get("_use_default_values") or []
        kwargs = {k: v for k, v in config.items() if k in known and k not in defaulted and v is not None}
        kwargs.setdefault("clip_sample", None)
        kwargs.setdefault("set_alpha_to_one", None)
        if "trained_betas" in kwargs:
            kwargs["trained_betas"] = tuple(kwargs["trained_betas"])
        return cls(**kwargs)

    @property
    def sigmas(self) -> np.ndarray:
        """k-diffusion sigmas sqrt((1 - abar) / abar), one per training timestep (ascending)."""
        return np.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)

    def alpha_bar_at(self, sigma: float) -> float:
        """abar for a (possibly off-grid) sigma: abar = 1 / (1 + sigma^2)."""
        return 1.0 / (1.0 + float(sigma) ** 2)
