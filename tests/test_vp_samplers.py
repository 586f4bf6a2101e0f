"""DDIM, DDPM, PLMS and LCM against diffusers' schedulers, and the VP-family behaviour diffusers has no twin for.

Parity: same synthetic model, same initial latents, same injected noise (tests/parity.py), SD1.x config with
clip_sample=False and set_alpha_to_one=False (SD's published configs; both sides read it, diffusers through
`<Scheduler>.from_config`), unless a test says otherwise; final latents within relative 1e-5 (float32). Where
we differ from diffusers by more than a few ulps it is diffusers' float32 rounding, not ours: our update folds
its coefficients in float64 (PLMS at 1 trailing step with v_prediction: diffusers float32 is 6.7e-6 from a float64 run of its own
code, we are 3e-7 from it).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler, PNDMScheduler

from sdrt.schedulers import NoiseSchedule, Sampler, drive, sample
from tests.parity import (SD1_CONFIG as SD1_BETAS, NoiseStream, diffusers_noise, initial_noise, rel_error,
                          run_diffusers, run_sdrt, synthetic_model)

SD1_CONFIG = dict(SD1_BETAS, clip_sample=False, set_alpha_to_one=False)
TOL = 1e-5
STEPS = (1, 2, 3, 10, 25, 50)
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction")


def _diffusers_scheduler(name: str, config: dict):
    """(scheduler, module whose randn_tensor draws the injected noise, or None if it draws none)."""
    if name == "ddim":
        return DDIMScheduler.from_config(config), "scheduling_ddim"
    if name == "ddpm":
        return DDPMScheduler.from_config(config), "scheduling_ddpm"
    if name == "plms":
        return PNDMScheduler.from_config(config, skip_prk_steps=True), None
    if name == "lcm":
        return LCMScheduler.from_config(config), "scheduling_lcm"
    raise KeyError(name)


def _reference(name: str, config: dict, steps: int, latents: np.ndarray, **step_kwargs) -> np.ndarray:
    scheduler, module = _diffusers_scheduler(name, config)
    noise = diffusers_noise(module, NoiseStream()) if module else contextlib.nullcontext()
    with noise:
        return run_diffusers(scheduler, steps, latents, **step_kwargs)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name, options", [("ddim", {}), ("ddim", {"eta": 0.7}), ("ddim", {"eta": 1.0}),
                                           ("ddpm", {}), ("plms", {}), ("lcm", {})],
                         ids=["ddim", "ddim-eta0.7", "ddim-eta1", "ddpm", "plms", "lcm"])
def test_txt2img_matches_diffusers(name: str, options: dict, steps: int, spacing: str, prediction_type: str) -> None:
    config = dict(SD1_CONFIG, timestep_spacing=spacing, prediction_type=prediction_type)
    latents = initial_noise()
    ref = _reference(name, config, steps, latents, **options)
    ours = run_sdrt(name, steps, latents, config, NoiseStream(), **options)
    assert ours.dtype == np.float32
    assert rel_error(ours, ref) <= TOL


def _diffusers_img2img(scheduler, steps: int, strength: float, x0: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """StableDiffusionImg2ImgPipeline's loop: timesteps[t_start:], add_noise at the first of them."""
    scheduler.set_timesteps(steps)
    t_start = max(steps - min(int(steps * strength), steps), 0)
    timesteps = scheduler.timesteps[t_start:]
    x = scheduler.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), timesteps[:1])
    for t in timesteps:
        out = torch.from_numpy(synthetic_model(x.numpy(), float(t)))
        x = scheduler.step(out, t, x, return_dict=False)[0]
    return x.numpy()


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_img2img_matches_diffusers(name: str, steps: int, strength: float) -> None:
    config = dict(SD1_CONFIG, prediction_type="epsilon")
    x0, noise = initial_noise(seed=3), initial_noise(seed=4)
    scheduler, module = _diffusers_scheduler(name, config)
    with diffusers_noise(module, NoiseStream()):
        ref = _diffusers_img2img(scheduler, steps, strength, x0, noise)
    sampler = Sampler.create(name, NoiseSchedule.from_config(config), steps)
    latents, start = sampler.noised_latents(x0, noise, strength)
    assert start == steps - int(steps * strength)
    ours = drive(sampler.run(latents, NoiseStream(), start_step=start), synthetic_model)
    assert rel_error(ours, ref) <= TOL


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_lcm_img2img_matches_diffusers(steps: int, strength: float) -> None:
    """LatentConsistencyModelImg2ImgPipeline: set_timesteps(N, strength) truncates the 50 distillation
    timesteps to int(50 strength) and still runs all N steps; add_noise at the first of them."""
    config = dict(SD1_CONFIG, prediction_type="epsilon")
    x0, noise = initial_noise(seed=3), initial_noise(seed=4)
    scheduler, module = _diffusers_scheduler("lcm", config)
    scheduler.set_timesteps(steps, strength=strength)
    with diffusers_noise(module, NoiseStream()):
        x = scheduler.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), scheduler.timesteps[:1])
        for t in scheduler.timesteps:
            x = scheduler.step(torch.from_numpy(synthetic_model(x.numpy(), float(t))), t, x, return_dict=False)[0]
    sampler = Sampler.create("lcm", NoiseSchedule.from_config(config), steps)
    latents, start = sampler.noised_latents(x0, noise, strength)
    assert start == 0 and sampler.timesteps.tolist() == scheduler.timesteps.tolist()
    ours = drive(sampler.run(latents, NoiseStream(), start_step=start), synthetic_model)
    assert rel_error(ours, x.numpy()) <= TOL


def test_lcm_img2img_with_too_few_distillation_timesteps_names_the_fix() -> None:
    sampler = Sampler.create("lcm", NoiseSchedule.from_config(SD1_CONFIG), 8)
    with pytest.raises(ValueError, match=r"^lcm img2img at strength 0\.1 has 5 distillation timesteps for 8 "
                                         r"steps: raise --strength or lower --steps$"):
        sampler.noised_latents(initial_noise(), initial_noise(seed=2), 0.1)


def test_plms_img2img_runs_the_warm_up_from_its_start_step() -> None:
    """Deliberate difference: diffusers' img2img slices PNDM's duplicated timestep list (timesteps[t_start:]),
    so it starts one level noisier and later evaluates the model at a timestep its latents are not at. We start
    at the strength's step and warm up there. Reference: diffusers' PNDM step arithmetic run over the list
    [t_k, t_k+1, t_k+1, t_k+2, ...] that a txt2img run starting at t_k would use."""
    config = dict(SD1_CONFIG, prediction_type="epsilon")
    steps, strength = 10, 0.6
    x0, noise = initial_noise(seed=3), initial_noise(seed=4)
    scheduler = PNDMScheduler.from_config(config, skip_prk_steps=True)
    scheduler.set_timesteps(steps)
    start = steps - int(steps * strength)
    distinct = scheduler._timesteps[::-1][start:]  # _timesteps is ascending
    scheduler.timesteps = torch.from_numpy(np.concatenate([distinct[:2], distinct[1:]]).astype(np.int64))
    x = scheduler.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.tensor([int(distinct[0])]))
    for t in scheduler.timesteps:
        x = scheduler.step(torch.from_numpy(synthetic_model(x.numpy(), float(t))), t, x, return_dict=False)[0]

    sampler = Sampler.create("plms", NoiseSchedule.from_config(config), steps)
    latents, first = sampler.noised_latents(x0, noise, strength)
    ours = drive(sampler.run(latents, NoiseStream(), start_step=first), synthetic_model)
    assert first == start
    assert rel_error(ours, x.numpy()) <= TOL


def _calls(name: str, ns: NoiseSchedule, steps: int, **kwargs) -> list:
    sampler = Sampler.create(name, ns, steps, **kwargs)
    calls = []
    loop = sampler.run(sampler.initial_latents(initial_noise()), NoiseStream())
    call = next(loop)
    try:
        while True:
            calls.append(call)
            call = loop.send(synthetic_model(call.x, call.timestep))
    except StopIteration:
        return calls


def test_plms_asks_for_the_duplicated_timestep_like_pndm() -> None:
    ns = NoiseSchedule.from_config(SD1_CONFIG)
    scheduler = PNDMScheduler.from_config(SD1_CONFIG, skip_prk_steps=True)
    scheduler.set_timesteps(10)
    calls = _calls("plms", ns, 10, spacing="leading")
    assert [c.timestep for c in calls] == [float(t) for t in scheduler.timesteps]
    assert [c.step for c in calls[:3]] == [0, 0, 1]
    assert calls[1].alpha_bar == pytest.approx(float(ns.alphas_cumprod[801]), rel=1e-7)


def _zero_snr_config(**extra) -> dict:
    return dict(SD1_CONFIG, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                timestep_spacing="trailing", **extra)


@pytest.mark.parametrize("steps", [1, 10, 25])
@pytest.mark.parametrize("name, options", [("ddim", {}), ("ddim", {"eta": 0.7}), ("ddpm", {})],
                         ids=["ddim", "ddim-eta0.7", "ddpm"])
def test_zero_terminal_snr_v_prediction_matches_diffusers(name: str, options: dict, steps: int) -> None:
    """The SD2 / Lin et al. recipe: first evaluation at abar = 0 exactly, no division by sqrt(abar).

    Our alphas_cumprod differ from diffusers' by <= 3.6e-7 here (torch's float32 sqrt is not correctly rounded,
    see test_schedules.py); the tolerance stays 1e-5 on the final latents. Not eta = 1: from abar = 0 its
    direction coefficient sqrt(1 - abar' - std^2) is exactly 0, which diffusers computes in float32 as
    sqrt(5.8e-11) = 7.6e-6 (a 2.4e-5 difference after one step that is diffusers' rounding, not a formula)."""
    config = _zero_snr_config()
    ns = NoiseSchedule.from_config(config)
    assert ns.alphas_cumprod[-1] == 0.0
    latents = initial_noise()
    ref = _reference(name, config, steps, latents, **options)
    ours = run_sdrt(name, steps, latents, config, NoiseStream(), **options)
    assert np.isfinite(ours).all()
    assert rel_error(ours, ref) <= TOL


@pytest.mark.parametrize("steps", [2, 10, 25])
def test_zero_terminal_snr_plms_stays_finite(steps: int) -> None:
    """diffusers' PNDM divides by alphas_cumprod[t] and returns NaN at abar = 0; ours uses the equivalent DDIM
    transfer. Check: finite, and the first (plain) step equals DDIM's."""
    config = _zero_snr_config()
    latents = initial_noise()
    pndm_config = {k: v for k, v in config.items() if k != "rescale_betas_zero_snr"}  # PNDM lacks the flag
    scheduler = PNDMScheduler.from_config(pndm_config, skip_prk_steps=True,
                                          trained_betas=NoiseSchedule.from_config(config).betas.tolist())
    assert np.isnan(run_diffusers(scheduler, steps, latents)).all()
    ours = run_sdrt("plms", steps, latents, config)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(run_sdrt("plms", 1, latents, config), run_sdrt("ddim", 1, latents, config),
                               rtol=0, atol=1e-6)


def test_zero_terminal_snr_epsilon_model_is_refused() -> None:
    ns = NoiseSchedule.from_config(_zero_snr_config() | {"prediction_type": "epsilon"})
    with pytest.raises(ValueError, match=r"^an epsilon-prediction model cannot be evaluated at zero terminal SNR "
                                         r"\(abar = 0 at the last training timestep\): use leading spacing, or a "
                                         r"v_prediction model$"):
        Sampler.create("ddim", ns, 10, spacing="trailing")
    Sampler.create("ddim", ns, 10, spacing="leading")  # 981 ... 1: never abar = 0


def test_bad_step_counts_name_the_fix() -> None:
    ns = NoiseSchedule.from_config(SD1_CONFIG)
    with pytest.raises(ValueError, match=r"^lcm runs at most 50 steps \(its distillation schedule\), got 51$"):
        Sampler.create("lcm", ns, 51)
    with pytest.raises(ValueError, match=r"^leading spacing with steps_offset=1 puts a timestep outside \[0, 999\] "
                                         r"at 1000 steps: use trailing spacing or fewer steps$"):
        Sampler.create("ddpm", ns, 1000, spacing="leading")
    with pytest.raises(ValueError, match=r"^steps must be at most num_train_timesteps \(1000\), got 1001$"):
        Sampler.create("ddim", ns, 1001)
    with pytest.raises(ValueError, match=r"^sampler 'lcm' does not support the 'karras' schedule"):
        Sampler.create("lcm", ns, 4, schedule="karras")


def test_add_noise_matches_diffusers() -> None:
    ns = NoiseSchedule.from_config(SD1_CONFIG)
    sampler = Sampler.create("ddim", ns, 25)
    scheduler, _ = _diffusers_scheduler("ddim", SD1_CONFIG)
    scheduler.set_timesteps(25)
    x0, noise = initial_noise(seed=3), initial_noise(seed=4)
    for step in (0, 7, 24):
        ref = scheduler.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), scheduler.timesteps[step:step + 1])
        assert rel_error(sampler.add_noise(x0, noise, step), ref.numpy()) <= 1e-6


# Sigma schedules for VP samplers have no diffusers counterpart; check them against an exact answer instead.
# For a point mass at c the exact eps is (x - sqrt(abar) c) / sqrt(1 - abar) and stays constant along the
# DDIM/PLMS ODE, and DDPM's posterior mean with the exact x0 is exact too; all three must land on c because
# sigma schedules end on abar = 1.


def _point_mass_model(ns: NoiseSchedule, center: float):
    train_sigmas = np.sqrt((1 - ns.alphas_cumprod.astype(np.float64)) / ns.alphas_cumprod)

    def model(x: np.ndarray, t: float) -> np.ndarray:
        # abar at a fractional timestep, by the same log-sigma interpolation the schedule used
        low = min(int(np.floor(t)), len(train_sigmas) - 2)
        w = t - low
        sigma = np.exp((1 - w) * np.log(train_sigmas[low]) + w * np.log(train_sigmas[low + 1]))
        abar = 1 / (1 + sigma**2)
        return ((x - np.sqrt(abar) * center) / np.sqrt(1 - abar)).astype(np.float32)

    return model


@pytest.mark.parametrize("steps", [1, 4, 20])
@pytest.mark.parametrize("schedule", ["karras", "exponential", "ays"])
@pytest.mark.parametrize("name", ["ddim", "ddpm", "plms"])
def test_sigma_schedules_denoise_a_point_mass_exactly(name: str, schedule: str, steps: int) -> None:
    ns = NoiseSchedule.from_config(SD1_CONFIG)
    center = 0.75
    out = sample(name, _point_mass_model(ns, center), initial_noise(), NoiseStream(), ns, steps, schedule=schedule)
    np.testing.assert_allclose(out, center, rtol=0, atol=2e-5)


@pytest.mark.parametrize("schedule", ["karras", "exponential", "ays"])
def test_sigma_schedule_timesteps_are_fractional_and_descending(schedule: str) -> None:
    ns = NoiseSchedule.from_config(SD1_CONFIG)
    built = Sampler.create("ddim", ns, 12, schedule=schedule).schedule
    sigmas = np.sqrt((1 - ns.alphas_cumprod.astype(np.float64)) / ns.alphas_cumprod)
    assert built.timesteps[0] == pytest.approx(999, abs=1e-3)  # AYS' table rounds sigma_max to 14.6146412293
    assert np.all(np.diff(built.timesteps) < 0)
    assert built.sigmas[-1] == 0.0 and built.prev_alpha_bars[-1] == 1.0
    np.testing.assert_allclose(built.alpha_bars, 1 / (1 + built.sigmas[:-1] ** 2), rtol=1e-12)
    # the network is told the timestep whose training sigma is the schedule's sigma (log-sigma interpolation)
    np.testing.assert_allclose(np.interp(built.timesteps, np.arange(1000), np.log(sigmas)),
                               np.log(built.sigmas[:-1]), atol=2e-3)


def test_ddim_eta_makes_it_stochastic_and_draws_one_noise_per_step() -> None:
    config = dict(SD1_CONFIG)
    stream = NoiseStream()
    run_sdrt("ddim", 7, initial_noise(), config, stream, eta=0.5)
    assert stream.draws == 7
    stream = NoiseStream()
    run_sdrt("ddim", 7, initial_noise(), config, stream)
    assert stream.draws == 0


@pytest.mark.parametrize("name, schedule", [(n, s) for n in ("ddim", "ddpm", "plms") for s in ("normal", "karras")]
                         + [("lcm", "normal")])
def test_end_step_sees_every_step_and_its_latents_are_used(name: str, schedule: str) -> None:
    """Inpainting hooks in here: end_step(i, x) after each step, and its return value is what the model sees
    next. PLMS calls it twice for its first step (trial and redone step both feed the model)."""
    ns = NoiseSchedule.from_config(SD1_CONFIG)
    sampler = Sampler.create(name, ns, 6, schedule=schedule)
    seen, replaced = [], []

    def end_step(i: int, x: np.ndarray) -> np.ndarray:
        seen.append(i)
        replaced.append(np.full_like(x, float(len(seen))))
        return replaced[-1]

    loop = sampler.run(sampler.initial_latents(initial_noise()), NoiseStream(), end_step=end_step)
    call = next(loop)
    inputs = []
    try:
        while True:
            call = loop.send(synthetic_model(call.x, call.timestep))
            inputs.append(call.x)
    except StopIteration as done:
        final = done.value
    assert seen == ([0, 0, 1, 2, 3, 4, 5] if name == "plms" else [0, 1, 2, 3, 4, 5])
    assert all(x is r for x, r in zip(inputs, replaced[:-1]))
    assert final is replaced[-1]


@pytest.mark.parametrize("schedule", ["karras", "exponential", "ays"])
@pytest.mark.parametrize("name", ["ddim", "ddpm", "plms"])
def test_sigma_schedule_img2img_denoises_a_point_mass_exactly(name: str, schedule: str) -> None:
    ns = NoiseSchedule.from_config(SD1_CONFIG)
    center = -0.4
    sampler = Sampler.create(name, ns, 10, schedule=schedule)
    latents, start = sampler.noised_latents(np.full((2, 4, 8, 8), center, np.float32), initial_noise(), 0.55)
    assert start == 5
    out = drive(sampler.run(latents, NoiseStream(), start_step=start), _point_mass_model(ns, center))
    np.testing.assert_allclose(out, center, rtol=0, atol=2e-5)


def test_lcm_txt2img_after_img2img_uses_the_full_schedule() -> None:
    sampler = Sampler.create("lcm", NoiseSchedule.from_config(SD1_CONFIG), 4)
    full = sampler.timesteps.tolist()
    sampler.noised_latents(initial_noise(), initial_noise(seed=2), 0.5)
    assert sampler.timesteps.tolist() != full
    sampler.initial_latents(initial_noise())
    assert sampler.timesteps.tolist() == full == [999, 759, 499, 259]


# clip_sample / clip_sample_range / set_alpha_to_one: followed as <Scheduler>.from_config(config) reads them,
# class defaults included (DDIM, DDPM clip by default; LCM does not; DDIM ends on abar = 1 by default, PNDM not).
PNDM_CONFIG = dict(SD1_BETAS, skip_prk_steps=True, set_alpha_to_one=False, _class_name="PNDMScheduler")
CLIP_CONFIGS = {
    "clip-range1": dict(SD1_CONFIG, clip_sample=True, clip_sample_range=1.0),
    "clip-range0.5": dict(SD1_CONFIG, clip_sample=True, clip_sample_range=0.5),
    "no-clip": dict(SD1_CONFIG, clip_sample=False, clip_sample_range=0.5),
    "pndm-config": PNDM_CONFIG,  # SD1-style PNDM config without clip_sample: DDIM / DDPM clip to 1.0
    "defaulted-keys": dict(SD1_CONFIG, _use_default_values=["clip_sample", "set_alpha_to_one"]),
    "alpha-to-one": dict(SD1_CONFIG, set_alpha_to_one=True, clip_sample=True, clip_sample_range=0.5),
}


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("config_id", list(CLIP_CONFIGS))
@pytest.mark.parametrize("name, options", [("ddim", {}), ("ddim", {"eta": 0.7}), ("ddpm", {}), ("lcm", {}),
                                           ("plms", {})],
                         ids=["ddim", "ddim-eta0.7", "ddpm", "lcm", "plms"])
def test_clip_sample_and_final_alpha_follow_the_config_like_diffusers(name: str, options: dict, config_id: str,
                                                                     steps: int, prediction_type: str) -> None:
    config = dict(CLIP_CONFIGS[config_id], prediction_type=prediction_type)
    latents = initial_noise()
    ref = _reference(name, config, steps, latents, **options)
    ours = run_sdrt(name, steps, latents, config, NoiseStream(), **options)
    assert rel_error(ours, ref) <= TOL


@pytest.mark.parametrize("name", ["ddim", "ddpm", "lcm"])
def test_clipping_changes_the_result(name: str) -> None:
    """The parity above is not vacuous: the synthetic model's x0 leaves [-0.5, 0.5], so clipping matters."""
    latents = initial_noise()
    clipped = run_sdrt(name, 10, latents, CLIP_CONFIGS["clip-range0.5"], NoiseStream())
    plain = run_sdrt(name, 10, latents, CLIP_CONFIGS["no-clip"], NoiseStream())
    wide = run_sdrt(name, 10, latents, CLIP_CONFIGS["clip-range1"], NoiseStream())
    assert rel_error(clipped, plain) > 1e-2 and rel_error(clipped, wide) > 1e-2


def test_pndm_config_without_clip_sample_clips_ddim_and_ddpm_but_not_plms() -> None:
    """diffusers fills DDIM's and DDPM's class default clip_sample=True into a PNDM config that lacks the key."""
    assert DDIMScheduler.from_config(PNDM_CONFIG).config.clip_sample is True  # the premise, from diffusers itself
    ns = NoiseSchedule.from_config(PNDM_CONFIG)
    assert ns.clip_sample is None and ns.set_alpha_to_one is False
    latents = initial_noise()
    for name in ("ddim", "ddpm"):
        assert rel_error(run_sdrt(name, 10, latents, PNDM_CONFIG, NoiseStream()),
                         run_sdrt(name, 10, latents, CLIP_CONFIGS["clip-range1"], NoiseStream())) == 0.0
    assert rel_error(run_sdrt("plms", 10, latents, PNDM_CONFIG), run_sdrt("plms", 10, latents, SD1_CONFIG)) == 0.0


def test_a_schedule_built_in_code_clips_nothing() -> None:
    ns = NoiseSchedule()
    assert (ns.clip_sample, ns.set_alpha_to_one) == (False, False)
