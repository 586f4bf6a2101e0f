"""Noise schedules, timestep spacings and sigma schedules against diffusers and the published AYS tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import AysSchedules

from sdrt.schedulers import NoiseSchedule, Sampler
from sdrt.schedulers.schedules import (ays_sigmas, exponential_sigmas, karras_sigmas, sigma_to_t,
                                       spaced_timesteps)

BETA_CONFIGS = [
    dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),  # DDPM / diffusers' default
    dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),  # SD 1.x / 2.x / XL
    dict(beta_schedule="squaredcos_cap_v2"),
]
STEPS = (1, 2, 3, 7, 10, 25, 50, 999)


def _diffusers_alphas_cumprod(config: dict, zero_snr: bool = False) -> np.ndarray:
    return DDIMScheduler(**config, rescale_betas_zero_snr=zero_snr).alphas_cumprod.numpy()


@pytest.mark.parametrize("config", BETA_CONFIGS, ids=lambda c: f"{c['beta_schedule']}-{c.get('beta_end', '')}")
def test_alphas_cumprod_bit_equal_to_diffusers(config: dict) -> None:
    ns = NoiseSchedule(**config)
    assert ns.alphas_cumprod.dtype == np.float32
    np.testing.assert_array_equal(ns.alphas_cumprod, _diffusers_alphas_cumprod(config))


def test_sd1_check_values() -> None:
    """The constants quoted in samplers.md section 0, computed independently of diffusers."""
    ns = NoiseSchedule()
    sigmas = ns.sigmas
    assert ns.alphas_cumprod[0] == pytest.approx(0.99915, abs=5e-6)
    assert ns.alphas_cumprod[999] == pytest.approx(0.0046601, rel=1e-4)
    assert sigmas[0] == pytest.approx(0.0291675, rel=1e-5)
    assert sigmas[1] == pytest.approx(0.041314, rel=1e-4)
    assert sigmas[999] == pytest.approx(14.61466, rel=1e-6)


@pytest.mark.parametrize("config", BETA_CONFIGS, ids=lambda c: f"{c['beta_schedule']}-{c.get('beta_end', '')}")
def test_zero_terminal_snr_matches_diffusers(config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Zero-SNR rescale: bit-equal to diffusers' algorithm, and within 4e-7 of stock diffusers.

    The only difference is torch's float32 `sqrt` on CPU, which is not correctly rounded (about 20% of values
    are 1 ulp off on this AVX-512 machine, via MKL); numpy's is. With a correctly rounded sqrt patched into
    torch, diffusers' rescale_zero_terminal_snr gives our alphas_cumprod bit for bit.
    """
    ns = NoiseSchedule(**config, rescale_betas_zero_snr=True)
    assert ns.alphas_cumprod[-1] == 0.0
    stock = _diffusers_alphas_cumprod(config, zero_snr=True)
    assert np.abs(ns.alphas_cumprod - stock).max() <= 4.5e-7

    monkeypatch.setattr(torch.Tensor, "sqrt", lambda self: torch.from_numpy(np.sqrt(self.numpy())))
    np.testing.assert_array_equal(ns.alphas_cumprod, _diffusers_alphas_cumprod(config, zero_snr=True))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", STEPS)
def test_spaced_timesteps_match_ddim_and_euler(spacing: str, steps: int) -> None:
    offset = 1
    ddim = DDIMScheduler(steps_offset=offset, timestep_spacing=spacing)
    ddim.set_timesteps(steps)
    ours = spaced_timesteps(spacing, steps, 1000, offset)
    np.testing.assert_array_equal(ours.round(), ddim.timesteps.numpy())
    # Euler keeps linspace timesteps as unrounded float32
    euler = EulerDiscreteScheduler(steps_offset=offset, timestep_spacing=spacing)
    euler.set_timesteps(steps)
    np.testing.assert_array_equal(ours.astype(np.float32), euler.timesteps.numpy())


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", STEPS[:-1])
def test_spaced_timesteps_match_dpm_solver(spacing: str, steps: int) -> None:
    """DPM-Solver asks for N+1 points and drops the last (leading, linspace); trailing keeps N points."""
    dpm = DPMSolverMultistepScheduler(steps_offset=1, timestep_spacing=spacing)
    dpm.set_timesteps(steps)
    if spacing == "trailing":
        ours = spaced_timesteps(spacing, steps, 1000, 1)
    else:
        ours = spaced_timesteps(spacing, steps + 1, 1000, 1)[:-1]
    np.testing.assert_array_equal(ours.round(), dpm.timesteps.numpy())


def test_spaced_timesteps_reference_examples() -> None:
    """samplers.md section 3: N = 10 and DDIM leading at 50 steps."""
    assert spaced_timesteps("leading", 10, 1000, 1).tolist() == list(range(901, 0, -100))
    assert spaced_timesteps("trailing", 10, 1000).tolist() == list(range(999, 0, -100))
    assert spaced_timesteps("linspace", 10, 1000).round().tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert spaced_timesteps("leading", 50, 1000, 1).tolist() == list(range(981, 0, -20))


# NVIDIA's published AYS levels (howto page, as ComfyUI transcribes them), independent of sdrt's own copy.
PUBLISHED_AYS = {
    "sd1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "sdxl": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
}
PUBLISHED_SD1_TIMESTEPS = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_ays_ten_steps_are_the_published_table(family: str) -> None:
    """Note: diffusers' AysSchedules sigma lists are not these: they are off by up to 0.3% (SD1) and 1.4%
    (SDXL, 0.113 vs 0.1114) from sigma(t) at NVIDIA's published timesteps; we follow NVIDIA / ComfyUI."""
    np.testing.assert_allclose(ays_sigmas(family, 11), PUBLISHED_AYS[family], rtol=1e-12)


def test_ays_sd1_levels_are_the_sd_sigmas_at_the_published_timesteps() -> None:
    """Our float32 schedule vs the table's own precision: 1.3e-5 at the smallest sigmas."""
    sigmas = NoiseSchedule().sigmas.astype(np.float64)
    np.testing.assert_allclose(ays_sigmas("sd1", 11), sigmas[PUBLISHED_SD1_TIMESTEPS], rtol=2e-5)
    assert list(AysSchedules["StableDiffusionTimesteps"]) == PUBLISHED_SD1_TIMESTEPS[:-1]


def test_ays_twenty_steps_interpolate_to_the_reference_values() -> None:
    """samplers.md section 4: 14.6146, 9.7275, 6.4746, 5.0016, 3.8637, ..., 0.1515, 0.0665, 0."""
    sampler_sigmas = Sampler.create("ddim", NoiseSchedule(), 20, schedule="ays").schedule.sigmas
    assert len(sampler_sigmas) == 21 and sampler_sigmas[-1] == 0.0
    np.testing.assert_allclose(sampler_sigmas[:5], [14.6146, 9.7275, 6.4746, 5.0016, 3.8637], atol=5e-5)
    np.testing.assert_allclose(sampler_sigmas[-3:-1], [0.1515, 0.0665], atol=5e-5)
    # every other level of the 20-step schedule is a published level
    np.testing.assert_allclose(ays_sigmas("sd1", 21)[::2], PUBLISHED_AYS["sd1"], rtol=1e-12)


@pytest.mark.parametrize("kind", ["karras", "exponential"])
@pytest.mark.parametrize("steps", [2, 10, 25, 50])  # at 1 step diffusers' linspace range collapses to sigma(0)
def test_karras_and_exponential_match_diffusers(kind: str, steps: int) -> None:
    euler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   timestep_spacing="linspace", **{f"use_{kind}_sigmas": True})
    euler.set_timesteps(steps)
    ns = NoiseSchedule()
    sigma_min, sigma_max = float(ns.sigmas[0]), float(ns.sigmas[-1])
    build = karras_sigmas if kind == "karras" else exponential_sigmas
    ours = build(sigma_min, sigma_max, steps)
    np.testing.assert_allclose(ours, euler.sigmas.numpy()[:-1], rtol=1e-6)
    # fractional timesteps for those sigmas; tolerance covers torch's 1-ulp sqrt in diffusers' training sigmas
    np.testing.assert_allclose(sigma_to_t(ours, ns.sigmas), euler.timesteps.numpy(), atol=2e-4)
