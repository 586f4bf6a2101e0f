"""Guidance and temperature against closed forms written here: guidance rescale at 0.5 and 0.7, the boundary
of the unconditional pass at cfg 1, and TSR on a v-prediction model.

Guidance rescale (diffusers' rescale_noise_cfg): std-rescale the guided output to the text branch's standard
deviation, then mix the rescaled and the plain guided output by the factor r:
    out = r * guided * std(cond) / std(guided) + (1 - r) * guided.
With cond = sigma z + m and uncond = u z + n for a zero-mean, unit-std pattern z, guided = g z + c with
g = u + s (sigma - u), c = n + s (m - n), and out = guided * (r sigma / |g| + 1 - r). At r = 0.5 the two mixing
weights are equal, so a swap of them is invisible there (0.5 guards the direction of the rescale and the axes
of the std); at r = 0.7 the swap gives guided * (0.3 sigma / |g| + 0.7), far from the closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdrt.runtime.denoise import GuidedUNet
from sdrt.runtime.guidance import apply_cfg, uses_cfg
from sdrt.runtime.text import Conditioning
from sdrt.schedulers import NoiseSchedule, Sampler, Temperature, drive

SCALE = 7.5
# per image: (sigma, m, u, n); image 1 has g < 0 (u > s sigma / (s - 1)), so std(guided) = |g|
IMAGES = [(1.3, 0.2, 0.4, -0.1), (0.5, -0.3, 0.9, 0.25)]


def _pattern(seed: int, shape: tuple) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal(shape)
    z -= z.mean()
    return z / z.std(ddof=1)


def _branches() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction [uncond; cond] float32, expected guided float64, sigma per image), shape (2 * 2, 4, 6, 5)."""
    shape = (4, 6, 5)
    uncond, cond, guided, sigmas = [], [], [], []
    for i, (sigma, m, u, n) in enumerate(IMAGES):
        z = _pattern(i, shape)
        cond.append(sigma * z + m)
        uncond.append(u * z + n)
        guided.append((u + SCALE * (sigma - u)) * z + (n + SCALE * (m - n)))
        sigmas.append(sigma)
    prediction = np.stack(uncond + cond).astype(np.float32)
    return prediction, np.stack(guided), np.array(sigmas)


def _rescaled(guided: np.ndarray, sigmas: np.ndarray, r: float) -> np.ndarray:
    g = np.array([u + SCALE * (sigma - u) for sigma, _, u, _ in IMAGES])
    assert g[1] < 0
    return guided * (r * sigmas / np.abs(g) + 1 - r)[:, None, None, None]


@pytest.mark.parametrize("rescale", [0.5, 0.7])
def test_guidance_rescale_closed_form(rescale: float) -> None:
    prediction, guided, sigmas = _branches()
    expected = _rescaled(guided, sigmas, rescale)
    np.testing.assert_allclose(apply_cfg(prediction, SCALE, rescale), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(apply_cfg(prediction, SCALE), guided, rtol=1e-5, atol=1e-5)  # rescale 0: plain CFG


class StubUNet:
    """An engine answering every call with a fixed prediction; records the batch it was fed."""

    def __init__(self, prediction: np.ndarray) -> None:
        self.prediction = prediction
        self.batches: list[int] = []

    def run(self, feeds: dict) -> dict:
        self.batches.append(feeds["sample"].shape[0])
        assert feeds["encoder_hidden_states"].shape[0] == feeds["sample"].shape[0]
        return {"out_sample": self.prediction[: feeds["sample"].shape[0]]}


@pytest.mark.parametrize("rescale", [0.5, 0.7])
def test_guided_unet_applies_the_rescale(rescale: float) -> None:
    prediction, guided, sigmas = _branches()
    engine = StubUNet(prediction)
    unet = GuidedUNet(engine, Conditioning(np.zeros((4, 77, 8), np.float32)), 2, SCALE, rescale, None)
    out = unet(np.zeros((2, 4, 6, 5), np.float32), 999.0)
    assert engine.batches == [4]
    np.testing.assert_allclose(out, _rescaled(guided, sigmas, rescale), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg, unconditional", [
    (1.0, False), (0.9999999, False), (0.0, False), (1.0000001, True), (math.nextafter(1.0, 2.0), True), (7.5, True),
])
def test_unconditional_pass_starts_just_above_one(cfg: float, unconditional: bool) -> None:
    """diffusers: do_classifier_free_guidance = guidance_scale > 1. cfg 1 exactly runs the text branch alone."""
    assert uses_cfg(cfg) is unconditional
    prediction, _, _ = _branches()
    engine = StubUNet(prediction)
    hidden = np.zeros((4 if unconditional else 2, 77, 8), np.float32)
    out = GuidedUNet(engine, Conditioning(hidden), 2, cfg, 0.0, None)(np.zeros((2, 4, 6, 5), np.float32), 1.0)
    assert engine.batches == [4 if unconditional else 2]
    uncond, cond = prediction[:2], prediction[2:]
    expected = uncond + np.float32(cfg) * (cond - uncond) if unconditional else prediction[:2]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


# ---- TSR on v-prediction -------------------------------------------------------------------------------
def _tsr_r(abar: float, k: float, sigma: float) -> float:
    """Temporal Score Rescaling's eps factor r(t) = (abar s^2 + 1 - abar) / (abar s^2 / k + 1 - abar)."""
    return (abar * sigma**2 + 1 - abar) / (abar * sigma**2 / k + 1 - abar)


def _tempered_v(v: np.ndarray, x: np.ndarray, abar: float, k: float, sigma: float) -> np.ndarray:
    """v' for eps' = r eps: eps = a v + s x, v' = (eps' - s x) / a = r v + (r - 1) (s / a) x."""
    a, s, r = math.sqrt(abar), math.sqrt(1 - abar), _tsr_r(abar, k, sigma)
    return r * v.astype(np.float64) + (r - 1) * (s / a) * x.astype(np.float64)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("abar", [0.9991, 0.5, 0.02])
def test_tsr_rescales_a_v_prediction_by_its_closed_form(temperature: float, abar: float) -> None:
    rng = np.random.default_rng(4)
    v, x = rng.standard_normal((2, 3, 4, 4), dtype=np.float32), rng.standard_normal((2, 3, 4, 4), dtype=np.float32)
    out = Temperature(temperature, "tsr", sigma=0.4).rescale_output(v, x, abar, "v_prediction")
    assert out.dtype == np.float32
    expected = _tempered_v(v, x, abar, 1 / temperature, 0.4)
    assert np.abs(expected - v).max() > 1e-2  # the temperature does something at this level
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp_2m"])
def test_tsr_sampling_on_v_prediction_equals_the_untempered_sampler_fed_the_closed_form(name: str) -> None:
    """A TSR run with model v(x, t) ends where the plain sampler ends when its model returns the tempered v'
    of the closed form at each evaluation's abar (alphas_cumprod at the integer timestep)."""
    ns = NoiseSchedule(prediction_type="v_prediction")
    abars = ns.alphas_cumprod.astype(np.float64)
    k, sigma = 2.0, 0.5

    def model(x: np.ndarray, t: float) -> np.ndarray:
        return (x * np.float32(0.6) - np.float32(0.2 + t / 4000)).astype(np.float32)

    def tempered(x: np.ndarray, t: float) -> np.ndarray:
        assert float(t).is_integer()
        return _tempered_v(model(x, t), x, abars[int(t)], k, sigma).astype(np.float32)

    latents = np.random.default_rng(6).standard_normal((2, 3, 4, 4), dtype=np.float32)
    tsr = Sampler.create(name, ns, 8, spacing="leading", temperature=Temperature(1 / k, "tsr", sigma=sigma))
    plain = Sampler.create(name, ns, 8, spacing="leading")  # integer timesteps: abar is a table entry
    out = drive(tsr.run(tsr.initial_latents(latents), lambda shape: None), model)
    expected = drive(plain.run(plain.initial_latents(latents), lambda shape: None), tempered)
    untempered = drive(plain.run(plain.initial_latents(latents), lambda shape: None), model)
    assert np.abs(untempered - expected).max() > 1e-2
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
