"""Sigma-space samplers (k-diffusion's family) with the semantics of their diffusers schedulers.

euler, euler_a, heun, dpm2, lms and dpmpp_sde integrate the probability-flow ODE (or its SDE) in VE space,
x = x_vp * sqrt(1 + sigma^2), where the model's noise estimate eps is exactly the ODE derivative
dx/dsigma = (x - x0) / sigma. Each sampler below is one short generator over the sigma list, in the style of
k-diffusion's sampling.py; the schedule, the starting scale and img2img's add-noise are shared by the family.

diffusers quirks reproduced here (see ../shared/reference/samplers.md, section 3):
- sigmas are interpolated *linearly in sigma* at the spaced timesteps, then a final 0 is appended; karras and
  exponential schedules span the ends of those interpolated sigmas (so "leading" starts below sigma_max) and
  give the network fractional timesteps (log-sigma interpolation); DPM2 rounds its Karras timesteps.
- init_noise_sigma is sigma_max, or sqrt(sigma_max^2 + 1) for "leading" spacing.
- Euler's churn adds its noise *after* the model call, which sees the un-churned latents at sigma.
- Heun, DPM2 and DPM++ SDE call the model twice per step (diffusers lists those timesteps twice, order 2);
  their last step, down to sigma 0, is a single Euler step.

Deliberate differences from diffusers:
- dpmpp_sde draws i.i.d. standard normals from the caller's noise source (two per step) where diffusers and
  k-diffusion use a torchsde Brownian tree; the marginals are the same, the individual samples are not.
- lms starting mid-schedule (img2img) warms up from order 1. diffusers uses the order-(step+1) coefficients
  with only the derivatives it has, which overshoots its first img2img steps (about 2.3x at order 4).
- euler_a does not draw the noise diffusers draws (and multiplies by 0) on the final step.

Arrays: the samplers never write to an array they were sent or have yielded (each step's latents are fresh),
and they may keep the model outputs they were sent (LMS keeps four), so callers send a fresh array per call.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from numpy.polynomial import polynomial

from .noise_schedule import NoiseSchedule
from .sampling import (
    ModelCall,
    NoiseSource,
    OptionsCheck,
    RunFn,
    SamplerLoop,
    SamplerOption,
    SamplerSpec,
    StepEnd,
    register,
)
from .schedules import Schedule, ays_sigmas, exponential_sigmas, karras_sigmas, sigma_to_t, spaced_timesteps

# ---------------------------------------------------------------------------------------------------------
# The family's schedule, starting scale and add-noise


def build_sigma_schedule(noise_schedule: NoiseSchedule, steps: int, schedule: str, spacing: str,
                         model_family: str = "sd1", *, round_karras_timesteps: bool = False,
                         timestep_dtype: type = np.float32) -> Schedule:
    """N timesteps and N+1 float32 sigmas (the last one 0) as diffusers' sigma schedulers build them.

    `round_karras_timesteps` is KDPM2DiscreteScheduler's quirk; `timestep_dtype` float64 is
    DPMSolverSDEScheduler's (the others hand the network float32 timesteps).
    """
    train_sigmas = noise_schedule.sigmas  # float32, ascending in t, as diffusers computes them
    timesteps = spaced_timesteps(spacing, steps, noise_schedule.num_train_timesteps, noise_schedule.steps_offset)
    timesteps = timesteps.astype(timestep_dtype)
    sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    if schedule == "karras":
        sigmas = karras_sigmas(sigmas[-1], sigmas[0], steps)
        timesteps = sigma_to_t(sigmas, train_sigmas)
        if round_karras_timesteps:
            timesteps = timesteps.round()
    elif schedule == "exponential":
        sigmas = exponential_sigmas(sigmas[-1], sigmas[0], steps)
        timesteps = sigma_to_t(sigmas, train_sigmas)
    elif schedule == "ays":
        # EulerDiscreteScheduler.set_timesteps(sigmas=...): float32 sigmas, their last replaced by 0.
        sigmas = ays_sigmas(model_family, steps + 1)[:-1].astype(np.float32)
        timesteps = sigma_to_t(sigmas, train_sigmas)
    elif schedule != "normal":
        raise ValueError(f"unknown schedule {schedule!r}: choose one of normal, karras, exponential, ays")
    sigmas = np.append(sigmas, 0.0).astype(np.float32)
    return Schedule(timesteps=timesteps.astype(timestep_dtype), sigmas=sigmas)


def init_noise_sigma(schedule: Schedule, noise_schedule: NoiseSchedule, spacing: str) -> float:
    """Scale of txt2img's starting noise: sigma_max, or sqrt(sigma_max^2 + 1) for "leading" (diffusers)."""
    sigma_max = schedule.sigmas.max()
    if spacing in ("linspace", "trailing"):
        return float(sigma_max)
    return float(np.sqrt(sigma_max * sigma_max + np.float32(1)))


def add_noise(x0: np.ndarray, noise: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule,
              step: int) -> np.ndarray:
    """x0 noised to the sigma of `step`, in VE space: x0 + sigma * noise."""
    return x0 + noise * schedule.sigmas[step]


# ---------------------------------------------------------------------------------------------------------
# Per-step pieces


def _model_call(x: np.ndarray, sigma: float, timestep: Any, step: int) -> ModelCall:
    """The evaluation at noise level sigma: VE latents scaled to the VP input the network was trained on."""
    return ModelCall(x=x * np.float32(1.0 / math.sqrt(sigma * sigma + 1.0)), timestep=float(timestep),
                     alpha_bar=1.0 / (1.0 + sigma * sigma), step=step)


def _denoised(output: np.ndarray, x: np.ndarray, sigma: float, prediction_type: str) -> np.ndarray:
    """The VE denoiser D(x, sigma) = c_skip * x + c_out * output, the clean-sample estimate.

    Written in VE terms (k-diffusion's c_skip/c_out) rather than through prediction.to_x0 on the rounded VP
    input: the first steps cancel large terms (|x| up to ~60 down to |x0| ~ 1), so every rounding shows.
    """
    if prediction_type == "epsilon":
        return x - output * np.float32(sigma)
    if prediction_type == "v_prediction":
        out = np.multiply(x, np.float32(1.0 / (sigma * sigma + 1.0)))
        out -= output * np.float32(sigma / math.sqrt(sigma * sigma + 1.0))
        return out
    if prediction_type == "sample":
        return output
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def _derivative(output: np.ndarray, x: np.ndarray, sigma: float, prediction_type: str) -> np.ndarray:
    """dx/dsigma = (x - D(x, sigma)) / sigma, which is the noise estimate eps (the output itself for epsilon).

    For v-prediction eps = v / sqrt(sigma^2 + 1) + sigma * x / (sigma^2 + 1) is formed directly rather than as
    (x - D) / sigma, which cancels in float32 at small sigma, where LMS reuses slopes with weights up to ~2.3.
    """
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        c = 1.0 / math.sqrt(sigma * sigma + 1.0)
        d = np.multiply(output, np.float32(c))
        d += x * np.float32(sigma * c * c)
        return d
    d = np.subtract(x, _denoised(output, x, sigma, prediction_type))
    d *= np.float32(1.0 / sigma)
    return d


def _euler_step(x: np.ndarray, d: np.ndarray, dt: float) -> np.ndarray:
    """x + d * dt, in a fresh array."""
    out = np.multiply(d, np.float32(dt))
    out += x
    return out


def _add_noise_inplace(x: np.ndarray, noise: NoiseSource, scale: float) -> None:
    """x += scale * z for a fresh standard-normal z (x must be the sampler's own array)."""
    z = noise(x.shape)
    x += z * np.float32(scale)


def _ancestral_split(sigma_from: float, sigma_to: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): the deterministic target and the noise to add for an ancestral step."""
    if sigma_to == 0.0:
        return 0.0, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - sigma_up**2), sigma_up


# ---------------------------------------------------------------------------------------------------------
# The samplers


def euler(x: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
          start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    """Euler (Karras et al. 2022, Algorithm 2), with EulerDiscreteScheduler's churn: the model sees x at
    sigma, then x is churned up to sigma_hat = sigma * (1 + gamma) before the step."""
    sigmas, timesteps, ptype = schedule.sigmas, schedule.timesteps, noise_schedule.prediction_type
    s_churn, s_tmin, s_tmax, s_noise = (float(options[k]) for k in ("s_churn", "s_tmin", "s_tmax", "s_noise"))
    churn_gamma = min(s_churn / len(timesteps), math.sqrt(2) - 1)
    for i in range(start_step, len(timesteps)):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        output = yield _model_call(x, sigma, timesteps[i], i)
        gamma = churn_gamma if s_tmin <= sigma <= s_tmax else 0.0
        if gamma > 0:
            sigma_hat = sigma * (1 + gamma)
            x = x + noise(x.shape) * np.float32(s_noise * math.sqrt(sigma_hat**2 - sigma**2))
            d = _derivative(output, x, sigma, ptype)
            if ptype != "epsilon":  # diffusers: x0 by the formula at sigma on the churned x, over sigma_hat
                d *= np.float32(sigma / sigma_hat)
        else:
            sigma_hat, d = sigma, _derivative(output, x, sigma, ptype)
        x = end_step(i, _euler_step(x, d, sigma_next - sigma_hat))
    return x


def euler_a(x: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
            start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    """Euler ancestral: an Euler step down to sigma_down, then fresh noise up to sigma_next."""
    sigmas, timesteps, ptype = schedule.sigmas, schedule.timesteps, noise_schedule.prediction_type
    eta, s_noise = float(options["eta"]), float(options["s_noise"])
    for i in range(start_step, len(timesteps)):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        output = yield _model_call(x, sigma, timesteps[i], i)
        sigma_down, sigma_up = _ancestral_split(sigma, sigma_next, eta)
        x = _euler_step(x, _derivative(output, x, sigma, ptype), sigma_down - sigma)
        if sigma_up > 0:
            _add_noise_inplace(x, noise, s_noise * sigma_up)
        x = end_step(i, x)
    return x


def heun(x: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
         start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    """Heun's method (Karras et al. 2022, Algorithm 1): Euler to sigma_next, then average the two slopes.

    A config with `clip_sample: true` clamps each x0 estimate to +-clip_sample_range before its slope is
    taken, as HeunDiscreteScheduler does (its default, and ours, is no clipping)."""
    sigmas, timesteps, ptype = schedule.sigmas, schedule.timesteps, noise_schedule.prediction_type
    clip = float(noise_schedule.clip_sample_range) if noise_schedule.clip_sample else None

    def slope(output: np.ndarray, x: np.ndarray, sigma: float) -> np.ndarray:
        if clip is None:
            return _derivative(output, x, sigma, ptype)
        d = np.subtract(x, np.clip(_denoised(output, x, sigma, ptype), -clip, clip))
        d *= np.float32(1.0 / sigma)
        return d

    for i in range(start_step, len(timesteps)):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        d = slope((yield _model_call(x, sigma, timesteps[i], i)), x, sigma)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = _euler_step(x, d, dt)
        else:
            x_next = _euler_step(x, d, dt)
            d_next = slope((yield _model_call(x_next, sigma_next, timesteps[i + 1], i)), x_next, sigma_next)
            x = _euler_step(x, np.add(d, d_next), 0.5 * dt)
        x = end_step(i, x)
    return x


def _dpm2_midpoints(sigmas: np.ndarray, noise_schedule: NoiseSchedule) -> tuple[np.ndarray, np.ndarray]:
    """Geometric midpoints sqrt(sigma_i * sigma_{i+1}) in float32 as KDPM2DiscreteScheduler computes them
    (exp of a torch.lerp of the logs), and their fractional timesteps."""
    with np.errstate(divide="ignore"):
        log_sigmas = np.log(sigmas)
    start, end = log_sigmas[1:], log_sigmas[:-1]
    mids = np.exp(end - (end - start) * np.float32(0.5)).astype(np.float32)  # torch.lerp with weight 0.5
    return mids, sigma_to_t(mids, noise_schedule.sigmas).astype(np.float32)


def dpm2(x: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
         start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    """DPM-Solver-2 (Karras et al.'s variant): Euler to the log-midpoint, then the full step with its slope."""
    sigmas, timesteps, ptype = schedule.sigmas, schedule.timesteps, noise_schedule.prediction_type
    mid_sigmas, mid_timesteps = _dpm2_midpoints(sigmas, noise_schedule)
    for i in range(start_step, len(timesteps)):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        d = _derivative((yield _model_call(x, sigma, timesteps[i], i)), x, sigma, ptype)
        if sigma_next == 0:
            x = _euler_step(x, d, sigma_next - sigma)
        else:
            sigma_mid = float(mid_sigmas[i])
            x_mid = _euler_step(x, d, sigma_mid - sigma)
            d_mid = _derivative((yield _model_call(x_mid, sigma_mid, mid_timesteps[i], i)), x_mid, sigma_mid, ptype)
            x = _euler_step(x, d_mid, sigma_next - sigma)
        x = end_step(i, x)
    return x


LMS_ORDER = 4


def lms_coefficients(sigmas: np.ndarray, steps: np.ndarray, order: int) -> np.ndarray:
    """Weights of the last `order` slopes (newest first) for each step sigma_i -> sigma_{i+1}, shape (steps, order).

    Each weight is the exact integral over the step of one Lagrange basis polynomial through
    sigma_i, sigma_{i-1}, ...; equivalently the weights integrate every polynomial of degree < order exactly,
    which is how they are solved for (moment equations in each step's own coordinate u = (s - sigma_i) / h,
    well conditioned at every noise level), for all steps in one batched solve.
    """
    steps = np.asarray(steps, dtype=np.intp)
    s = sigmas.astype(np.float64)
    h = s[steps + 1] - s[steps]
    nodes = (s[steps[:, None] - np.arange(order)] - s[steps, None]) / h[:, None]  # 0, then negative
    moments = h[:, None] / np.arange(1, order + 1)  # h * integral of u^k over [0, 1]
    vander_t = polynomial.polyvander(nodes, order - 1).transpose(0, 2, 1)  # [step, k, node] = u_node^k
    return np.linalg.solve(vander_t, moments[..., None])[..., 0]


def _lms_weights(sigmas: np.ndarray, start_step: int, num_steps: int) -> list[np.ndarray]:
    """Per-step weights from `start_step` on, warming up from order 1 (one slope more each step)."""
    warm_up = range(start_step, min(start_step + LMS_ORDER - 1, num_steps))
    weights = [lms_coefficients(sigmas, [i], i - start_step + 1)[0] for i in warm_up]
    full = np.arange(start_step + LMS_ORDER - 1, num_steps)
    return weights + list(lms_coefficients(sigmas, full, LMS_ORDER)) if len(full) else weights


def lms(x: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
        start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    """Linear multistep (order 4): integrate the polynomial through the last four slopes."""
    sigmas, timesteps, ptype = schedule.sigmas, schedule.timesteps, noise_schedule.prediction_type
    weights = _lms_weights(sigmas, start_step, len(timesteps))
    slopes: deque[np.ndarray] = deque(maxlen=LMS_ORDER)  # newest first
    for i in range(start_step, len(timesteps)):
        sigma = float(sigmas[i])
        slopes.appendleft(_derivative((yield _model_call(x, sigma, timesteps[i], i)), x, sigma, ptype))
        w = weights[i - start_step]
        step = np.multiply(slopes[0], np.float32(w[0]))
        scratch = np.empty_like(step)
        for k in range(1, len(slopes)):
            step += np.multiply(slopes[k], np.float32(w[k]), out=scratch)
        step += x
        x = end_step(i, step)
    return x


def dpmpp_sde(x: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
              start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    """DPM-Solver++ (stochastic, second order, r = 1/2): an ancestral DPM-Solver++(1) step to the log-midpoint,
    then the full ancestral step with the midpoint's denoised estimate. Noise: i.i.d., not a Brownian tree."""
    sigmas, timesteps, ptype = schedule.sigmas, schedule.timesteps, noise_schedule.prediction_type
    eta, s_noise = float(options["eta"]), float(options["s_noise"])
    mid_sigmas = np.sqrt(sigmas[:-1].astype(np.float64) * sigmas[1:])  # midpoints in log-sigma
    mid_timesteps = sigma_to_t(mid_sigmas, noise_schedule.sigmas)

    def ancestral_step(x: np.ndarray, denoised: np.ndarray, sigma_from: float, sigma_to: float) -> np.ndarray:
        sigma_down, sigma_up = _ancestral_split(sigma_from, sigma_to, eta)
        ratio = sigma_down / sigma_from  # DPM-Solver++(1) from sigma_from to sigma_down: a linear blend
        out = np.multiply(x, np.float32(ratio))
        out += denoised * np.float32(1 - ratio)
        _add_noise_inplace(out, noise, s_noise * sigma_up)
        return out

    for i in range(start_step, len(timesteps)):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        output = yield _model_call(x, sigma, timesteps[i], i)
        if sigma_next == 0:
            x = _euler_step(x, _derivative(output, x, sigma, ptype), -sigma)
        else:
            sigma_mid = float(mid_sigmas[i])
            x_mid = ancestral_step(x, _denoised(output, x, sigma, ptype), sigma, sigma_mid)
            output = yield _model_call(x_mid, sigma_mid, mid_timesteps[i], i)
            x = ancestral_step(x, _denoised(output, x_mid, sigma_mid, ptype), sigma, sigma_next)
        x = end_step(i, x)
    return x


# ---------------------------------------------------------------------------------------------------------
# Registration


def _register(name: str, title: str, run: RunFn, counterpart: str, *, stochastic: bool = False,
              options: dict[str, SamplerOption] | None = None, check_options: OptionsCheck | None = None,
              **schedule_quirks: Any) -> None:
    def build(noise_schedule: NoiseSchedule, steps: int, schedule: str, spacing: str, family: str) -> Schedule:
        return build_sigma_schedule(noise_schedule, steps, schedule, spacing, family, **schedule_quirks)

    register(SamplerSpec(name=name, title=title, stochastic=stochastic, default_spacing="linspace",
                         build_schedule=build, run=run, init_noise_sigma=init_noise_sigma, add_noise=add_noise,
                         diffusers_counterpart=counterpart, options=options or {}, check_options=check_options))


# Ranges: what the formulas can use. k-diffusion and diffusers check none of these; a negative churn or noise
# scale, or NaN anywhere, only shows up as a black image. eta above 1 is allowed for the ancestral samplers, as
# in k-diffusion: sigma_up is capped at sigma_next, so it only moves towards a full ancestral step.
_S_NOISE = SamplerOption(1.0, help="scale of the injected noise (1: as trained; 0: none)")
_ANCESTRAL = {"eta": SamplerOption(1.0, help="ancestral noise per step (0: deterministic, 1: full step)"),
              "s_noise": _S_NOISE}
_CHURN = {
    "s_churn": SamplerOption(0.0, help="churn: noise re-added each step, gamma = min(s_churn / steps, 0.414) "
                                       "(0: none)"),
    "s_tmin": SamplerOption(0.0, help="churn only at sigma >= s_tmin"),
    "s_tmax": SamplerOption(math.inf, help="churn only at sigma <= s_tmax", infinite=True),
    "s_noise": SamplerOption(1.0, help="scale of the churn noise"),
}


def _check_churn_window(options: dict) -> None:
    if options["s_tmin"] > options["s_tmax"]:
        raise ValueError(f"sampler option s_tmin={options['s_tmin']:g} is above s_tmax={options['s_tmax']:g}: "
                         "churn applies to sigma in [s_tmin, s_tmax], so s_tmin must be <= s_tmax")


_register("euler", "Euler", euler, "EulerDiscreteScheduler", options=_CHURN, check_options=_check_churn_window)
_register("euler_a", "Euler a", euler_a, "EulerAncestralDiscreteScheduler", stochastic=True, options=_ANCESTRAL)
_register("heun", "Heun", heun, "HeunDiscreteScheduler")
_register("dpm2", "DPM2", dpm2, "KDPM2DiscreteScheduler", round_karras_timesteps=True)
_register("lms", "LMS", lms, "LMSDiscreteScheduler")
_register("dpmpp_sde", "DPM++ SDE", dpmpp_sde, "DPMSolverSDEScheduler (i.i.d. noise, not a Brownian tree)",
          stochastic=True, options=_ANCESTRAL, timestep_dtype=np.float64)
