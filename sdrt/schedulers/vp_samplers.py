"""The variance-preserving family: DDIM, DDPM, PLMS and LCM step x_t = sqrt(abar) x0 + sqrt(1 - abar) eps directly.

They share one schedule builder (diffusers' integer timesteps with its spacing quirks, or a sigma schedule
mapped onto fractional timesteps), init_noise_sigma = 1 and add_noise = sqrt(abar) x0 + sqrt(1 - abar) n.

Every update below is a linear combination of the current latents x, the clean estimate x0 and the noise
estimate eps. For each prediction type x0 and eps are themselves linear in (x, model output), so `_combine`
folds the coefficients (in float64) into two scalars and touches the latents with one multiply-add. That is
cheap per step, and never divides by sqrt(abar): a v-prediction model evaluated at zero terminal SNR (abar = 0,
the SD2 / Lin et al. recipe with trailing spacing) is sampled exactly, as DDIMScheduler does. An epsilon model
cannot be evaluated there (x0 = (x - eps) / 0), which the schedule builder rejects with a clear error.

Quirks kept for parity with diffusers (../shared/reference/samplers.md, section 3): DDIM and PLMS step to
t - T//N whatever the spacing, and end on alphas_cumprod[0] (set_alpha_to_one=False); DDPM steps to the next
scheduled timestep and ends on abar = 1; PLMS repeats its second timestep for a Heun-like warm-up. The
config's clip_sample / clip_sample_range (DDIM, DDPM, LCM: x0 clamped before it is used; eps is the model's,
not re-derived) and set_alpha_to_one (DDIM, PLMS: end on abar = 1 instead of alphas_cumprod[0]) are followed,
with each diffusers class's default where the config does not say (DDIM and DDPM clip, LCM does not; DDIM
ends on 1, PLMS does not), as `<Scheduler>.from_config(config)` would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .noise_schedule import NoiseSchedule
from .sampling import ModelCall, NoiseSource, SamplerLoop, SamplerOption, SamplerSpec, StepEnd, register
from .schedules import Schedule, ays_sigmas, exponential_sigmas, karras_sigmas, sigma_to_t, spaced_timesteps

# LCMScheduler's defaults, shared by every published LCM / LCM-LoRA checkpoint.
LCM_ORIGINAL_STEPS = 50  # original_inference_steps: the distillation schedule has T // 50 spacing
LCM_TIMESTEP_SCALING = 10.0
LCM_SIGMA_DATA = 0.5
# Smallest abar we map a zero-terminal-SNR schedule's last timestep to when a *sigma* schedule needs a finite
# sigma_max (diffusers' EulerDiscreteScheduler makes the same substitution).
ZERO_SNR_ALPHA_BAR = 2.0**-24
# diffusers' class defaults, for a config that does not set the key (NoiseSchedule field None).
CLIP_SAMPLE_DEFAULT = {"ddim": True, "ddpm": True, "lcm": False}
SET_ALPHA_TO_ONE_DEFAULT = {"ddim": True, "plms": False}


@dataclass(frozen=True)
class VPSchedule(Schedule):
    """A Schedule plus the noise levels VP samplers step between (for the normal schedule, the float32
    alphas_cumprod values diffusers indexes, exactly).

    `prev_alpha_bars[i]` is where step i lands. For the normal schedule that is diffusers' choice (DDIM/PLMS:
    t - T//N, so with linspace spacing not always the next step's level); for sigma schedules it is the next
    level, and 1 (sigma 0, fully denoised) after the last step.
    """

    alpha_bars: np.ndarray  # abar at each step's evaluation (N)
    prev_alpha_bars: np.ndarray  # abar each step moves to (N)
    warmup_alpha_bars: np.ndarray  # PLMS: the level diffusers assumes a redone step starts from (N)


# ---------------------------------------------------------------------------------------------------------
# Schedules


def _sigmas_from_alpha_bars(alpha_bars: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):  # abar = 0 (zero terminal SNR) is sigma = inf, a fair answer
        return np.sqrt((1.0 - alpha_bars) / alpha_bars)


def _diffusers_timesteps(ns: NoiseSchedule, steps: int, spacing: str) -> np.ndarray:
    """DDIM/DDPM/PNDM integer timesteps for `spacing` (linspace rounded, leading shifted by steps_offset)."""
    T = ns.num_train_timesteps
    if steps > T:
        raise ValueError(f"steps must be at most num_train_timesteps ({T}), got {steps}")
    timesteps = spaced_timesteps(spacing, steps, T, ns.steps_offset).round().astype(np.int64)
    if timesteps.max() >= T or timesteps.min() < 0:
        raise ValueError(f"{spacing} spacing with steps_offset={ns.steps_offset} puts a timestep outside "
                         f"[0, {T - 1}] at {steps} steps: use trailing spacing or fewer steps")
    return timesteps


def _final_alpha_bar(ns: NoiseSchedule, sampler: str) -> float:
    """Where DDIM / PLMS land after t - T//N < 0: 1 with set_alpha_to_one, else alphas_cumprod[0]."""
    to_one = ns.set_alpha_to_one if ns.set_alpha_to_one is not None else SET_ALPHA_TO_ONE_DEFAULT[sampler]
    return 1.0 if to_one else float(ns.alphas_cumprod[0])


def _clip_range(ns: NoiseSchedule, sampler: str) -> float | None:
    """The clip_sample_range x0 is clamped to, or None when this sampler does not clip for this config."""
    clip = ns.clip_sample if ns.clip_sample is not None else CLIP_SAMPLE_DEFAULT[sampler]
    return float(ns.clip_sample_range) if clip else None


def _normal_schedule(ns: NoiseSchedule, steps: int, spacing: str, prev_rule: str,
                     final_alpha_bar: float = 1.0) -> VPSchedule:
    """diffusers' own timesteps. prev_rule "ddim": t - T//N, else `final_alpha_bar`; "next": the next
    scheduled timestep, and abar = 1 after the last one (DDPMScheduler)."""
    ac = ns.alphas_cumprod
    timesteps = _diffusers_timesteps(ns, steps, spacing)
    alpha_bars = ac[timesteps].astype(np.float64)
    jump = ns.num_train_timesteps // steps
    if prev_rule == "ddim":
        prev = timesteps - jump
        prev_alpha_bars = np.where(prev >= 0, ac[np.maximum(prev, 0)].astype(np.float64), final_alpha_bar)
    else:
        prev_alpha_bars = np.append(alpha_bars[1:], 1.0)
    # PNDM's warm-up redoes step i "from t_{i+1} + T//N to t_{i+1}" (equal to t_i unless the spacing is uneven).
    warmup_from = np.minimum(np.append(timesteps[1:], timesteps[-1]) + jump, ns.num_train_timesteps - 1)
    sigmas = _sigmas_from_alpha_bars(np.append(alpha_bars, prev_alpha_bars[-1]))
    return VPSchedule(timesteps.astype(np.float64), sigmas, alpha_bars, prev_alpha_bars,
                      ac[warmup_from].astype(np.float64))


def _finite_train_sigmas(ns: NoiseSchedule) -> np.ndarray:
    ac = ns.alphas_cumprod.astype(np.float64)
    return np.sqrt((1.0 - ac) / np.maximum(ac, ZERO_SNR_ALPHA_BAR))


def _sigma_schedule(ns: NoiseSchedule, steps: int, schedule: str, model_family: str) -> VPSchedule:
    """karras / exponential / ays for VP samplers (our choice; diffusers' DDIM/DDPM/PNDM have none of these).

    The sigma levels (the full training range [sigma(0), sigma(T-1)] for karras and exponential, the published
    table for ays) become fractional timesteps by diffusers' log-sigma interpolation (`sigma_to_t`) and noise
    levels abar = 1 / (1 + sigma^2). The last step lands on abar = 1 (sigma 0), i.e. fully denoised, as every
    k-diffusion schedule ends on sigma 0: unlike the normal schedule there is no alphas_cumprod[0] remainder.
    """
    train_sigmas = _finite_train_sigmas(ns)
    if schedule == "karras":
        sigmas = karras_sigmas(train_sigmas[0], train_sigmas[-1], steps)
    elif schedule == "exponential":
        sigmas = exponential_sigmas(train_sigmas[0], train_sigmas[-1], steps)
    elif schedule == "ays":
        sigmas = ays_sigmas(model_family, steps + 1)[:-1]
    else:
        raise ValueError(f"unknown schedule {schedule!r} for a VP sampler")
    alpha_bars = 1.0 / (1.0 + sigmas**2)
    return VPSchedule(sigma_to_t(sigmas, train_sigmas), np.append(sigmas, 0.0), alpha_bars,
                      np.append(alpha_bars[1:], 1.0), alpha_bars.copy())


def _check_evaluable(ns: NoiseSchedule, schedule: VPSchedule) -> VPSchedule:
    if ns.prediction_type == "epsilon" and np.any(schedule.alpha_bars <= 0.0):
        raise ValueError("an epsilon-prediction model cannot be evaluated at zero terminal SNR (abar = 0 at the "
                         "last training timestep): use leading spacing, or a v_prediction model")
    return schedule


def _build(sampler: str, prev_rule: str):
    def build(ns: NoiseSchedule, steps: int, schedule: str, spacing: str, model_family: str) -> VPSchedule:
        if schedule == "normal":
            final = _final_alpha_bar(ns, sampler) if prev_rule == "ddim" else 1.0
            built = _normal_schedule(ns, steps, spacing, prev_rule, final)
        else:
            built = _sigma_schedule(ns, steps, schedule, model_family)
        return _check_evaluable(ns, built)

    return build


def _lcm_timesteps(ns: NoiseSchedule, steps: int, strength: float = 1.0) -> VPSchedule:
    """LCMScheduler.set_timesteps: N of the first int(50 strength) distillation timesteps (T//50 * j - 1),
    evenly by index, noisiest first. Strength < 1 (img2img) truncates the distillation schedule; all N steps run.
    """
    T = ns.num_train_timesteps
    available = int(LCM_ORIGINAL_STEPS * strength)
    if steps > LCM_ORIGINAL_STEPS:
        raise ValueError(f"lcm runs at most {LCM_ORIGINAL_STEPS} steps (its distillation schedule), got {steps}")
    if steps > available:
        raise ValueError(f"lcm img2img at strength {strength} has {available} distillation timesteps for "
                         f"{steps} steps: raise --strength or lower --steps")
    origin = (np.arange(1, available + 1) * (T // LCM_ORIGINAL_STEPS) - 1)[::-1]
    timesteps = origin[np.floor(np.linspace(0, len(origin), steps, endpoint=False)).astype(np.int64)]
    alpha_bars = ns.alphas_cumprod[timesteps].astype(np.float64)
    prev_alpha_bars = np.append(alpha_bars[1:], alpha_bars[-1])  # the last step returns the denoised sample
    sigmas = _sigmas_from_alpha_bars(np.append(alpha_bars, 1.0))
    return _check_evaluable(ns, VPSchedule(timesteps.astype(np.float64), sigmas, alpha_bars, prev_alpha_bars,
                                           alpha_bars.copy()))


def _lcm_schedule(ns: NoiseSchedule, steps: int, schedule: str, spacing: str, model_family: str) -> VPSchedule:
    """`spacing` does not apply: LCM models only know their distillation timesteps."""
    return _lcm_timesteps(ns, steps)


def init_noise_sigma(schedule: Schedule, ns: NoiseSchedule, spacing: str) -> float:
    return 1.0


def add_noise(x0: np.ndarray, noise: np.ndarray, schedule: VPSchedule, ns: NoiseSchedule, step: int) -> np.ndarray:
    """The forward process at step `step`: sqrt(abar) x0 + sqrt(1 - abar) n."""
    abar = float(schedule.alpha_bars[step])
    return (math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------
# The shared update


def _coefficients(alpha_bar: float, prediction_type: str, c_x: float, c_x0: float, c_eps: float) -> tuple[float, float]:
    """(k_x, k_out) with c_x x + c_x0 x0 + c_eps eps = k_x x + k_out output, for x0 and eps read from the model
    output at noise level alpha_bar."""
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "epsilon":  # x0 = (x - s*out)/a, eps = out
        return c_x + c_x0 / a, c_eps - c_x0 * s / a
    if prediction_type == "v_prediction":  # x0 = a*x - s*out, eps = s*x + a*out
        return c_x + c_x0 * a + c_eps * s, c_eps * a - c_x0 * s
    if prediction_type == "sample":  # x0 = out, eps = (x - a*out)/s
        return c_x + c_eps / s, c_x0 - c_eps * a / s
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def _combine(x: np.ndarray, output: np.ndarray, alpha_bar: float, prediction_type: str, *,
             c_x: float = 0.0, c_x0: float = 0.0, c_eps: float = 0.0) -> np.ndarray:
    """c_x * x + c_x0 * x0 + c_eps * eps, as a new array."""
    k_x, k_out = _coefficients(alpha_bar, prediction_type, c_x, c_x0, c_eps)
    result = x * np.float32(k_x)
    result += np.float32(k_out) * output
    return result


def _combine_clipped(x: np.ndarray, output: np.ndarray, alpha_bar: float, prediction_type: str,
                     clip: float | None, *, c_x: float = 0.0, c_x0: float = 0.0, c_eps: float = 0.0) -> np.ndarray:
    """`_combine` with x0 clamped to [-clip, clip] first (diffusers' clip_sample); eps stays the model's."""
    if clip is None:
        return _combine(x, output, alpha_bar, prediction_type, c_x=c_x, c_x0=c_x0, c_eps=c_eps)
    x0 = _combine(x, output, alpha_bar, prediction_type, c_x0=1.0)
    np.clip(x0, -clip, clip, out=x0)
    result = _combine(x, output, alpha_bar, prediction_type, c_x=c_x, c_eps=c_eps)
    result += np.float32(c_x0) * x0
    return result


def _steps(schedule: VPSchedule, start_step: int):
    for i in range(start_step, schedule.num_steps):
        yield i, float(schedule.timesteps[i]), float(schedule.alpha_bars[i]), float(schedule.prev_alpha_bars[i])


# ---------------------------------------------------------------------------------------------------------
# Samplers


def ddim(x: np.ndarray, schedule: VPSchedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
         start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    """DDIM (Song et al. 2021, eq. 12):
    x' = sqrt(abar') x0 + sqrt(1 - abar' - std^2) eps + std z,
    std = eta sqrt((1 - abar') / (1 - abar) (1 - abar / abar')). Noise is drawn every step when eta > 0."""
    eta = float(options.get("eta", 0.0))
    ptype, clip = noise_schedule.prediction_type, _clip_range(noise_schedule, "ddim")
    for i, t, abar, prev in _steps(schedule, start_step):
        output = yield ModelCall(x, t, abar, i)
        std = eta * math.sqrt((1.0 - prev) / (1.0 - abar) * (1.0 - abar / prev))
        x = _combine_clipped(x, output, abar, ptype, clip, c_x0=math.sqrt(prev),
                             c_eps=math.sqrt(max(1.0 - prev - std * std, 0.0)))
        if eta > 0:
            x += np.float32(std) * noise(x.shape)
        x = end_step(i, x)
    return x


def ddpm(x: np.ndarray, schedule: VPSchedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
         start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    """DDPM ancestral step (Ho et al. 2020, eq. 7), the posterior q(x' | x, x0) with x0 from the model:
    x' = sqrt(abar') beta / (1 - abar) x0 + sqrt(alpha) (1 - abar') / (1 - abar) x + sqrt(var) z,
    alpha = abar / abar', beta = 1 - alpha, var = max((1 - abar') / (1 - abar) beta, 1e-20) ("fixed_small").
    Like diffusers, noise is drawn whenever the timestep is above 0 (also on the last step, with var ~ 0)."""
    ptype, clip = noise_schedule.prediction_type, _clip_range(noise_schedule, "ddpm")
    for i, t, abar, prev in _steps(schedule, start_step):
        output = yield ModelCall(x, t, abar, i)
        alpha = abar / prev
        beta = 1.0 - alpha
        x = _combine_clipped(x, output, abar, ptype, clip, c_x0=math.sqrt(prev) * beta / (1.0 - abar),
                     c_x=math.sqrt(alpha) * (1.0 - prev) / (1.0 - abar))
        if t > 0:
            std = math.sqrt(max((1.0 - prev) / (1.0 - abar) * beta, 1e-20))
            x += np.float32(std) * noise(x.shape)
        x = end_step(i, x)
    return x


# Adams-Bashforth weights on the last 1..4 model outputs (newest first), PNDM's linear multistep.
_PLMS_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _deterministic_step(x: np.ndarray, outputs: list[np.ndarray], weights: tuple[float, ...], abar: float,
                        prev: float, ptype: str) -> np.ndarray:
    """PNDM's transfer (eq. 9), which equals DDIM with eta = 0: x' = sqrt(abar') x0 + sqrt(1 - abar') eps, for
    the output sum_j weights[j] outputs[-1-j] (folded into the update: one pass per output)."""
    k_x, k_out = _coefficients(abar, ptype, 0.0, math.sqrt(prev), math.sqrt(1.0 - prev))
    result = x * np.float32(k_x)
    for weight, output in zip(weights, reversed(outputs)):
        result += np.float32(k_out * weight) * output
    return result


def plms(x: np.ndarray, schedule: VPSchedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
         start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    """PLMS (Liu et al. 2022, PNDM with skip_prk_steps, as Stable Diffusion uses it).

    The DDIM transfer driven by an Adams-Bashforth combination of the last model outputs (up to 4). The first
    step is taken twice: a plain step, then the model at the next timestep, and the step redone from the same
    start with the average of both outputs (a Heun warm-up costing one extra model call; both calls report
    step = start). Outputs are combined as the network gives them (eps or v) and converted afterwards, as
    diffusers does. end_step runs after both the trial and the redone first step, since both feed the model.
    img2img (start_step > 0) warms up at its first step. diffusers' img2img instead slices PNDM's duplicated
    list (timesteps[t_start:]), starting one level noisier and later asking the model about a timestep its
    latents are not at; we do not reproduce that.
    """
    ptype = noise_schedule.prediction_type
    outputs: list[np.ndarray] = []  # newest last
    for i, t, abar, prev in _steps(schedule, start_step):
        output = yield ModelCall(x, t, abar, i)
        if i == start_step and i + 1 < schedule.num_steps:
            x_start = x
            x = end_step(i, _deterministic_step(x_start, [output], (1.0,), abar, prev, ptype))
            next_abar = float(schedule.alpha_bars[i + 1])
            second = yield ModelCall(x, float(schedule.timesteps[i + 1]), next_abar, i)
            x = _deterministic_step(x_start, [output, second], (0.5, 0.5), float(schedule.warmup_alpha_bars[i]),
                                    next_abar, ptype)
            outputs.append(output)
            x = end_step(i, x)
            continue
        outputs = outputs[-3:] + [output]
        x = end_step(i, _deterministic_step(x, outputs, _PLMS_WEIGHTS[len(outputs)], abar, prev, ptype))
    return x


def _lcm_boundary_scalings(timestep: float) -> tuple[float, float]:
    """Consistency-model boundary condition c_skip(t) -> 1, c_out(t) -> 0 as t -> 0 (LCM, Luo et al. 2023)."""
    scaled = timestep * LCM_TIMESTEP_SCALING
    denom = scaled * scaled + LCM_SIGMA_DATA**2
    return LCM_SIGMA_DATA**2 / denom, scaled / math.sqrt(denom)


def lcm(x: np.ndarray, schedule: VPSchedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
        start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    """LCM multistep sampling: denoise in one jump, D = c_skip x + c_out x0, then re-noise to the next
    timestep, x' = sqrt(abar') D + sqrt(1 - abar') z; the last step returns D itself."""
    ptype, clip = noise_schedule.prediction_type, _clip_range(noise_schedule, "lcm")
    last = schedule.num_steps - 1
    for i, t, abar, prev in _steps(schedule, start_step):
        output = yield ModelCall(x, t, abar, i)
        c_skip, c_out = _lcm_boundary_scalings(t)
        scale = 1.0 if i == last else math.sqrt(prev)
        x = _combine_clipped(x, output, abar, ptype, clip, c_x=scale * c_skip, c_x0=scale * c_out)
        if i != last:
            x += np.float32(math.sqrt(1.0 - prev)) * noise(x.shape)
        x = end_step(i, x)
    return x


# eta > 1 makes the noise's variance exceed the step's (1 - abar' - std^2 < 0): diffusers returns NaN there.
_DDIM_ETA = SamplerOption(0.0, maximum=1.0, help="noise per step (0: deterministic DDIM, 1: DDPM-like)")
_COMMON = dict(init_noise_sigma=init_noise_sigma, add_noise=add_noise, default_spacing="leading")

register(SamplerSpec(name="ddim", title="DDIM", stochastic=False, build_schedule=_build("ddim", "ddim"), run=ddim,
                     diffusers_counterpart="DDIMScheduler", options={"eta": _DDIM_ETA}, **_COMMON))
register(SamplerSpec(name="ddpm", title="DDPM", stochastic=True, build_schedule=_build("ddpm", "next"), run=ddpm,
                     diffusers_counterpart="DDPMScheduler", **_COMMON))
register(SamplerSpec(name="plms", title="PLMS", stochastic=False, build_schedule=_build("plms", "ddim"), run=plms,
                     diffusers_counterpart="PNDMScheduler(skip_prk_steps=True)", **_COMMON))
register(SamplerSpec(name="lcm", title="LCM", stochastic=True, build_schedule=_lcm_schedule, run=lcm,
                     diffusers_counterpart="LCMScheduler", schedules=("normal",),
                     strength_schedule=_lcm_timesteps, **_COMMON))
