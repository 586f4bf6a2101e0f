"""Parity of the multistep samplers (dpmpp_2m, dpmpp_2m_sde, unipc) with diffusers' schedulers.

Both sides run the same synthetic model from the same initial latents with the same injected noise (see
parity.py); final latents must agree within relative 1e-5 (float32). Measured worst case: about 1.4e-6.
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from parity import (SD1_CONFIG, NoiseStream, diffusers_noise, initial_noise, rel_error, run_diffusers, run_sdrt,
                    synthetic_model)
from sdrt.schedulers import NoiseSchedule, Sampler, drive
from sdrt.schedulers.multistep import multistep_schedule

TOLERANCE = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers vs numpy 2
STEPS = (1, 2, 3, 10, 25, 50)

# name -> (diffusers module that draws the noise, scheduler class, extra constructor arguments)
COUNTERPARTS = {
    "dpmpp_2m": ("scheduling_dpmsolver_multistep", DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_sde": ("scheduling_dpmsolver_multistep", DPMSolverMultistepScheduler,
                     {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("scheduling_unipc_multistep", UniPCMultistepScheduler, {}),
}
SIGMA_FLAGS = {"normal": {}, "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True}}
# The published Align Your Steps timesteps for SD1.5 at 10 steps (diffusers' scheduling_utils.AysSchedules).
AYS_SD1_TIMESTEPS = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]


def make_scheduler(name: str, config: dict, **extra):
    module, cls, kwargs = COUNTERPARTS[name]
    return cls(**config, **kwargs, **extra)


def noise_patch(name: str, stream: NoiseStream):
    """Only the SDE variant draws noise; UniPC's module has no randn_tensor to patch."""
    module = COUNTERPARTS[name][0]
    return diffusers_noise(module, stream) if name == "dpmpp_2m_sde" else contextlib.nullcontext()


def diffusers_loop(scheduler, timesteps, x: torch.Tensor, end_step=None) -> np.ndarray:
    """The pipeline loop over given timesteps; `end_step(i, latents)` mimics a legacy-inpaint blend."""
    for i, t in enumerate(timesteps):
        out = torch.from_numpy(synthetic_model(scheduler.scale_model_input(x, t).numpy(), float(t)))
        x = scheduler.step(out, t, x, return_dict=False)[0]
        if end_step is not None:
            x = torch.from_numpy(end_step(i, x.numpy()))
    return x.numpy()


def txt2img_cases():
    for name, steps, prediction in itertools.product(COUNTERPARTS, STEPS, ("epsilon", "v_prediction")):
        for spacing in ("leading", "trailing", "linspace"):
            yield name, steps, prediction, "normal", spacing
        for schedule in ("karras", "exponential"):
            yield name, steps, prediction, schedule, "linspace"
    for name, steps in itertools.product(COUNTERPARTS, STEPS):
        yield name, steps, "sample", "normal", "linspace"


@pytest.mark.parametrize("name,steps,prediction,schedule,spacing", list(txt2img_cases()))
def test_txt2img_matches_diffusers(name: str, steps: int, prediction: str, schedule: str, spacing: str) -> None:
    config = dict(SD1_CONFIG, prediction_type=prediction, timestep_spacing=spacing)
    latents = initial_noise()
    reference_noise = NoiseStream()
    with noise_patch(name, reference_noise):
        ref = run_diffusers(make_scheduler(name, config, **SIGMA_FLAGS[schedule]), steps, latents)
    our_noise = NoiseStream()
    ours = run_sdrt(name, steps, latents, config, our_noise, schedule=schedule, spacing=spacing)
    assert rel_error(ours, ref) <= TOLERANCE
    assert our_noise.draws == reference_noise.draws  # the SDE draws once per step, as diffusers does


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_2m_sde"])
def test_ays_matches_diffusers_with_the_published_timesteps(name: str) -> None:
    """AYS at 10 steps is the published table: diffusers runs it as custom timesteps; the sigmas are those of
    the table's timesteps, so both sides agree."""
    ns = NoiseSchedule.from_config(SD1_CONFIG)
    sampler = Sampler.create(name, ns, 10, schedule="ays")
    assert sampler.timesteps.tolist() == AYS_SD1_TIMESTEPS
    scheduler = make_scheduler(name, SD1_CONFIG)
    scheduler.set_timesteps(timesteps=AYS_SD1_TIMESTEPS)
    latents = initial_noise()
    with noise_patch(name, NoiseStream()):
        ref = diffusers_loop(scheduler, scheduler.timesteps, torch.from_numpy(latents.copy()))
    ours = drive(sampler.run(sampler.initial_latents(latents), NoiseStream()), synthetic_model)
    assert rel_error(ours, ref) <= TOLERANCE


def test_ays_at_20_steps_interpolates_the_table_and_ends_at_zero() -> None:
    """Reference values (samplers.md, section 4): log-linear interpolation of the 11 published levels onto 21
    points; the last level, sigma_min, becomes 0 as for every multistep schedule."""
    sampler = Sampler.create("unipc", NoiseSchedule.from_config(SD1_CONFIG), 20, schedule="ays")
    sigmas = sampler.schedule.sigmas
    np.testing.assert_allclose(sigmas[:5], [14.6146, 9.7275, 6.4746, 5.0016, 3.8637], rtol=2e-5)
    np.testing.assert_allclose(sigmas[-3:-1], [0.1515, 0.0665], rtol=1e-3)
    assert sigmas[-1] == 0.0 and len(sigmas) == 21


@pytest.mark.parametrize("name,steps,strength", list(itertools.product(COUNTERPARTS, (10, 25), (0.3, 0.75))))
def test_img2img_matches_diffusers(name: str, steps: int, strength: float) -> None:
    """diffusers' img2img: start at index N - int(N * strength) with fresh solver history, add_noise there."""
    x0, noise = initial_noise(seed=3), initial_noise(seed=4)
    scheduler = make_scheduler(name, SD1_CONFIG)
    scheduler.set_timesteps(steps)
    start = steps - min(int(steps * strength), steps)
    timesteps = scheduler.timesteps[start:]
    scheduler.set_begin_index(start)
    x = scheduler.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), timesteps[:1])
    with noise_patch(name, NoiseStream()):
        ref = diffusers_loop(scheduler, timesteps, x)

    sampler = Sampler.create(name, NoiseSchedule.from_config(SD1_CONFIG), steps)
    ours_start, ours_first = sampler.noised_latents(x0, noise, strength)
    assert ours_first == start
    assert rel_error(ours_start, x.numpy()) <= 1e-6
    ours = drive(sampler.run(ours_start, NoiseStream(), start_step=start), synthetic_model)
    assert rel_error(ours, ref) <= TOLERANCE


@pytest.mark.parametrize("name", list(COUNTERPARTS))
def test_latents_replaced_after_each_step_match_diffusers(name: str) -> None:
    """A legacy-inpaint style blend after every step. UniPC's corrector restarts from its own previous sample
    (diffusers' `last_sample`), so a blend reaches it only through the model output: both sides must agree."""
    steps = 12
    keep = (np.arange(np.prod(initial_noise().shape)).reshape(initial_noise().shape) % 3 == 0)
    target = initial_noise(seed=11) * np.float32(0.5)

    def blend(i: int, x: np.ndarray) -> np.ndarray:
        return np.where(keep, target * np.float32(1.0 - i / steps), x).astype(np.float32)

    latents = initial_noise()
    scheduler = make_scheduler(name, SD1_CONFIG)
    scheduler.set_timesteps(steps)
    with noise_patch(name, NoiseStream()):
        ref = diffusers_loop(scheduler, scheduler.timesteps, torch.from_numpy(latents.copy()), end_step=blend)
    sampler = Sampler.create(name, NoiseSchedule.from_config(SD1_CONFIG), steps)
    ours = drive(sampler.run(sampler.initial_latents(latents), NoiseStream(), end_step=blend), synthetic_model)
    assert rel_error(ours, ref) <= TOLERANCE


@pytest.mark.parametrize("name", list(COUNTERPARTS))
def test_caller_latents_are_not_modified(name: str) -> None:
    latents = initial_noise()
    before = latents.copy()
    run_sdrt(name, 5, latents, SD1_CONFIG)
    sampler = Sampler.create(name, NoiseSchedule.from_config(SD1_CONFIG), 5)
    start = sampler.initial_latents(latents)
    kept = start.copy()
    drive(sampler.run(start, NoiseStream()), synthetic_model)
    assert np.array_equal(latents, before) and np.array_equal(start, kept)


COSINE = dict(SD1_CONFIG, beta_schedule="squaredcos_cap_v2")


@pytest.mark.parametrize("spacing,steps", list(itertools.product(("leading", "trailing", "linspace"), (3, 10, 25))))
def test_lambda_min_clipped_schedule_matches_diffusers(spacing: str, steps: int) -> None:
    """DPMSolverMultistep drops the cosine schedule's last timesteps below lambda_min_clipped (DeepFloyd IF's
    -5.1) before spacing. Not reachable through Sampler.create (no config key in NoiseSchedule)."""
    scheduler = DPMSolverMultistepScheduler(**COSINE, lambda_min_clipped=-5.1, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    ours = multistep_schedule(NoiseSchedule.from_config(COSINE), steps, "normal", spacing, lambda_min_clipped=-5.1)
    assert ours.timesteps.tolist() == scheduler.timesteps.tolist()
    assert ours.timesteps[0] < 999  # the clip is in effect
    np.testing.assert_allclose(ours.sigmas, scheduler.sigmas.numpy(), rtol=1e-6)


@pytest.mark.parametrize("name,schedule", list(itertools.product(COUNTERPARTS, ("karras", "exponential"))))
def test_cosine_schedule_timesteps_match_diffusers(name: str, schedule: str) -> None:
    """DPMSolverMultistep leaves the cosine schedule's Karras timesteps unrounded (its int64 cast truncates);
    UniPC rounds them. Exponential timesteps are truncated by both."""
    scheduler = make_scheduler(name, COSINE, **SIGMA_FLAGS[schedule])
    scheduler.set_timesteps(25)
    sampler = Sampler.create(name, NoiseSchedule.from_config(COSINE), 25, schedule=schedule)
    assert sampler.timesteps.tolist() == scheduler.timesteps.tolist()
    np.testing.assert_allclose(sampler.schedule.sigmas, scheduler.sigmas.numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", list(COUNTERPARTS))
def test_interleaved_and_abandoned_runs_do_not_share_buffers(name: str) -> None:
    """The samplers reuse their row buffers between runs: two runs driven in lockstep, and a run abandoned
    halfway, must not disturb each other."""
    ns = NoiseSchedule.from_config(SD1_CONFIG)
    sampler = Sampler.create(name, ns, 10)
    alone = drive(sampler.run(sampler.initial_latents(initial_noise(7)), NoiseStream(7)), synthetic_model)

    abandoned = sampler.run(sampler.initial_latents(initial_noise(seed=5)), NoiseStream(seed=5))
    call = next(abandoned)
    for _ in range(4):
        call = abandoned.send(synthetic_model(call.x, call.timestep))
    abandoned.close()

    loops = [sampler.run(sampler.initial_latents(initial_noise(seed)), NoiseStream(seed)) for seed in (7, 8)]
    calls = [next(loop) for loop in loops]
    results: list[np.ndarray | None] = [None, None]
    while any(r is None for r in results):
        for j, loop in enumerate(loops):
            if results[j] is None:
                try:
                    calls[j] = loop.send(synthetic_model(calls[j].x, calls[j].timestep))
                except StopIteration as done:
                    results[j] = done.value
    other = drive(sampler.run(sampler.initial_latents(initial_noise(8)), NoiseStream(8)), synthetic_model)
    np.testing.assert_array_equal(results[0], alone)
    np.testing.assert_array_equal(results[1], other)
