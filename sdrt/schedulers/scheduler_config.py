"""Which keys of a diffusers scheduler config sdrt follows, and refusing a config that asks for something else.

A bundle carries the checkpoint's scheduler config unchanged. sdrt reads three kinds of keys from it:
- the model's noise schedule and output (betas, timesteps, prediction type, spacing): NoiseSchedule follows them;
- how DDIM / DDPM / PLMS / LCM treat x0 and their last step (clip_sample, clip_sample_range, set_alpha_to_one):
  the VP samplers follow them, with each diffusers class's default where the config is silent, exactly as
  `<Scheduler>.from_config(config)` would;
- which sampling algorithm and sigma schedule to run (`_class_name`, use_karras_sigmas, solver_order, ...):
  in sdrt these are the request's --sampler / --schedule, so the config's choice does not apply.
Anything else that changes results and that no sdrt sampler implements is refused here with one line, so it is
never ignored silently (REFUSED below: the key, the value(s) sdrt implements, and what the key does).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .noise_schedule import NoiseSchedule

# key -> (values sdrt implements, what it does in diffusers)
REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "thresholding": ((False,), "dynamic thresholding of x0 (DDIM, DDPM, LCM, DPM-Solver, UniPC)"),
    "variance_type": ((None, "fixed_small"), "the DDPM / DPM-Solver variance (learned variances need a second "
                                             "model output)"),
    "timestep_type": (("discrete",), "continuous EDM timesteps (EulerDiscreteScheduler)"),
    "interpolation_type": (("linear",), "log-linear sigma interpolation (EulerDiscreteScheduler)"),
    "final_sigmas_type": (("zero",), "ending on sigma_min instead of 0"),
    "lambda_min_clipped": ((-math.inf,), "clipping log-SNR for cosine schedules (DPMSolverMultistepScheduler)"),
    "euler_at_final": ((False,), "a first-order last step (DPMSolverMultistepScheduler)"),
    "use_flow_sigmas": ((False,), "flow-matching sigmas"),
    "use_dynamic_shifting": ((False,), "resolution-dependent timestep shifting"),
    "shift_terminal": ((None,), "stretching the schedule to a terminal value"),
}
BOOLEAN = ("clip_sample", "set_alpha_to_one", "rescale_betas_zero_snr")
FIX = "sdrt's samplers do not implement this; use a checkpoint whose scheduler config leaves it at the default"


class SchedulerConfigError(ValueError):
    """A scheduler config sdrt cannot follow; the message names the key and why."""


def explicit_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys the config really sets: diffusers treats those listed in `_use_default_values` as absent."""
    defaulted = config.get("_use_default_values") or []
    return {k: v for k, v in config.items() if k not in defaulted and k != "_use_default_values"}


def check_scheduler_config(config: Mapping[str, Any]) -> NoiseSchedule:
    """The config's NoiseSchedule, or SchedulerConfigError for a key sdrt would otherwise ignore or misread."""
    keys = explicit_keys(config)
    for key, (implemented, meaning) in REFUSED.items():
        if key in keys and not any(_same(keys[key], value) for value in implemented):
            raise SchedulerConfigError(f"{key}={keys[key]!r} asks for {meaning}: {FIX}")
    for key in BOOLEAN:
        if key in keys and not isinstance(keys[key], bool):
            raise SchedulerConfigError(f"{key} must be true or false, got {keys[key]!r}: re-export the model "
                                       "(sdrt export)")
    if "clip_sample_range" in keys:
        value = keys["clip_sample_range"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise SchedulerConfigError(f"clip_sample_range must be a positive number, got {value!r}: re-export "
                                       "the model (sdrt export)")
    try:
        return NoiseSchedule.from_config(config)
    except (ValueError, TypeError) as exc:
        raise SchedulerConfigError(f"{exc}: re-export the model (sdrt export)") from None


def _same(value: Any, implemented: Any) -> bool:
    if isinstance(implemented, bool) or implemented is None:
        return value is implemented
    if isinstance(implemented, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) == implemented
    return value == implemented
