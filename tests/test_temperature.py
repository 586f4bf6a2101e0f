"""Temperature against exact answers: TSR and CNS driving our DDIM and DDPM with closed-form scores.

The "model" is exact: for data sum_i w_i N(mu_i, v I) the noised marginal at level abar is
sum_i w_i N(a mu_i, (a^2 v + 1 - abar) I), a = sqrt(abar), and eps = -sqrt(1 - abar) * score, computed analytically.
The batch is the sample set, so one sampler run gives all samples at once.

Discretisation, stated honestly (the exact variance recursion for this linear-Gaussian case, no sampling noise,
cosine schedule, 1000 steps, variance / target):

    k           0.5     1      2      4
    DDIM eta=0  0.995  0.994  0.991  0.987
    DDPM        0.986  0.981  0.973  0.961

DDIM with 1000 steps is within 3% of sigma^2/k outright, so it is tested against the exact answer. DDPM's
"fixed_small" variance omits Var[x0 | x_t] and loses ~2% even untempered (4% at k = 4) on diffusers' cosine
betas, whatever the temperature method; so DDPM is tested as TSR's variance over the same sampler's untempered
variance (same latents, same noise) within 3% of 1/k, which isolates what TSR does. (samplers.md's DDPM figures
above 1 come from a sampler with a larger injected variance.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdrt.schedulers import NoiseSchedule, Sampler, Temperature, drive, tsr_ratio

STEPS = 1000
COSINE = NoiseSchedule(beta_schedule="squaredcos_cap_v2", steps_offset=0)
SPACING = "trailing"  # 999, 998, ..., 0: every training timestep
TOLERANCE = 0.03


class ExactMixture:
    """eps-prediction of an isotropic Gaussian mixture, exactly, for integer timesteps of `noise_schedule`."""

    def __init__(self, means, variance: float, weights, noise_schedule: NoiseSchedule = COSINE) -> None:
        self.means = np.atleast_2d(np.asarray(means, dtype=np.float64))  # (modes, dim)
        self.variance = variance
        self.log_weights = np.log(np.asarray(weights, dtype=np.float64))
        self.alphas_cumprod = noise_schedule.alphas_cumprod.astype(np.float64)

    def __call__(self, x: np.ndarray, timestep: float) -> np.ndarray:
        abar = self.alphas_cumprod[int(timestep)]
        a, noise_var = math.sqrt(abar), 1.0 - abar
        total_var = a * a * self.variance + noise_var
        centers = (a * self.means).astype(np.float32)
        if len(centers) == 1:
            center = centers[0]
        else:  # responsibilities of each mode: softmax over modes of log w - |x - a mu|^2 / (2 total_var)
            logits = np.stack([lw - ((x - c) ** 2).sum(axis=1) * np.float32(0.5 / total_var)
                               for lw, c in zip(self.log_weights.astype(np.float32), centers)])  # (modes, n)
            resp = np.exp(logits - logits.max(axis=0))
            resp /= resp.sum(axis=0)
            center = resp.T @ centers
        return (x - center) * np.float32(math.sqrt(noise_var) / total_var)


def _run(name: str, model: ExactMixture, dim: int, temperature: Temperature, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sampler = Sampler.create(name, COSINE, STEPS, spacing=SPACING, temperature=temperature)
    latents = sampler.initial_latents(rng.standard_normal((n, dim), dtype=np.float32))
    return drive(sampler.run(latents, lambda shape: rng.standard_normal(shape, dtype=np.float32)), model)


def _final_alpha_bar(name: str) -> float:
    return float(Sampler.create(name, COSINE, STEPS, spacing=SPACING).schedule.prev_alpha_bars[-1])


def _tempered_variance(name: str, variance: float, k: float) -> float:
    """Variance of the tempered target N(mu, v/k) noised to the sampler's last level (DDIM stops at
    alphas_cumprod[0], set_alpha_to_one=False: 4e-5 of noise variance; DDPM stops at abar = 1)."""
    abar = _final_alpha_bar(name)
    return abar * variance / k + (1.0 - abar)


MEAN, VARIANCE = 0.5, 0.04  # N(0.5, 0.2^2), as in samplers.md's check


@pytest.mark.parametrize("k", [0.5, 2.0, 4.0])
def test_tsr_ddim_gaussian_variance_is_sigma2_over_k(k: float) -> None:
    model = ExactMixture([[MEAN]], VARIANCE, [1.0])
    out = _run("ddim", model, 1, Temperature(1 / k, "tsr", sigma=math.sqrt(VARIANCE)), n=50_000)
    assert abs(out.var() / _tempered_variance("ddim", VARIANCE, k) - 1) <= TOLERANCE
    assert abs(out.mean() - MEAN) <= 0.01


@pytest.mark.parametrize("k", [0.5, 2.0, 4.0])
def test_tsr_ddpm_gaussian_variance_relative_to_untempered(k: float) -> None:
    model = ExactMixture([[MEAN]], VARIANCE, [1.0])
    n = 20_000
    tempered = _run("ddpm", model, 1, Temperature(1 / k, "tsr", sigma=math.sqrt(VARIANCE)), n)
    plain = _run("ddpm", model, 1, Temperature(), n)
    assert abs(tempered.var() / plain.var() * k - 1) <= TOLERANCE
    assert abs(plain.var() / VARIANCE - 1) <= 0.03  # DDPM's own discretisation, untempered: ~0.981
    assert abs(tempered.mean() - MEAN) <= 0.01


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_tsr_two_dimensional_gaussian(name: str) -> None:
    """Isotropic N(mu, v I) in 2-D at k = 2: both variances scale by 1/k and no correlation appears."""
    k, mean = 2.0, np.array([0.5, -0.3])
    model = ExactMixture([mean], VARIANCE, [1.0])
    temperature = Temperature(1 / k, "tsr", sigma=math.sqrt(VARIANCE))
    out = _run(name, model, 2, temperature, n=20_000)
    cov = np.cov(out.T)
    if name == "ddim":
        reference = _tempered_variance("ddim", VARIANCE, k)
    else:
        reference = np.cov(_run(name, model, 2, Temperature(), n=20_000).T).diagonal() / k
    np.testing.assert_allclose(cov.diagonal() / reference, 1.0, atol=TOLERANCE)
    assert abs(cov[0, 1]) <= TOLERANCE * VARIANCE / k
    np.testing.assert_allclose(out.mean(axis=0), mean, atol=0.01)


MODES, MODE_VARIANCE, WEIGHTS = np.array([[-1.5], [0.0], [1.5]]), 0.02, np.array([0.2, 0.3, 0.5])


def _mode_weights(samples: np.ndarray) -> np.ndarray:
    nearest = np.abs(samples - MODES[:, 0]).argmin(axis=1)
    return np.bincount(nearest, minlength=len(MODES)) / len(samples)


def test_tsr_keeps_mixture_weights_and_cns_distorts_them() -> None:
    """TSR is a local temperature: each mode sharpens (per-mode variance v/k) and the weights stay. CNS, which
    only shrinks the noise, moves mass between the modes (samplers.md: (.2,.3,.5) -> (.05,.39,.56))."""
    k = 4.0
    model = ExactMixture(MODES, MODE_VARIANCE, WEIGHTS)
    n = 20_000
    tsr = _run("ddpm", model, 1, Temperature(1 / k, "tsr", sigma=math.sqrt(MODE_VARIANCE)), n)
    np.testing.assert_allclose(_mode_weights(tsr), WEIGHTS, atol=0.01)
    middle = tsr[np.abs(tsr[:, 0]) < 0.75, 0]
    assert abs(middle.var() / (MODE_VARIANCE / k) - 1) <= 0.1  # sharpened mode (DDPM bias ~4%, see above)

    cns = _run("ddpm", model, 1, Temperature(1 / k, "cns"), n)
    assert np.abs(_mode_weights(cns) - WEIGHTS).max() >= 0.05


def test_tsr_keeps_mixture_weights_with_ddim() -> None:
    k = 4.0
    model = ExactMixture(MODES, MODE_VARIANCE, WEIGHTS)
    out = _run("ddim", model, 1, Temperature(1 / k, "tsr", sigma=math.sqrt(MODE_VARIANCE)), 20_000)
    np.testing.assert_allclose(_mode_weights(out), WEIGHTS, atol=0.01)


# samplers.md section 1, "Unit-test values on the SD1.5 schedule".
R_TABLE = {
    (0.95, 1.0): {999: 0.999755, 500: 0.985665, 250: 0.965752, 100: 0.955051, 0: 0.950040},
    (2.0, 0.5): {999: 1.000585, 500: 1.045557, 250: 1.205209, 100: 1.513792, 0: 1.99324},
}


@pytest.mark.parametrize("k, sigma", list(R_TABLE))
def test_tsr_ratio_reproduces_the_reference_table(k: float, sigma: float) -> None:
    alphas_cumprod = NoiseSchedule().alphas_cumprod
    for t, expected in R_TABLE[(k, sigma)].items():
        assert tsr_ratio(float(alphas_cumprod[t]), k, sigma) == pytest.approx(expected, abs=6e-6)


def test_tsr_limits() -> None:
    """r -> 1 at pure noise and r -> k at clean data."""
    assert tsr_ratio(0.0, 4.0, 0.3) == 1.0
    assert tsr_ratio(1.0, 4.0, 0.3) == pytest.approx(4.0)


def test_tsr_is_the_same_for_v_prediction_models() -> None:
    """TSR scales eps; a v-prediction model must be tempered identically after conversion."""
    v_schedule = NoiseSchedule(beta_schedule="squaredcos_cap_v2", steps_offset=0, prediction_type="v_prediction")
    eps_model = ExactMixture([[MEAN]], VARIANCE, [1.0])
    alphas_cumprod = COSINE.alphas_cumprod.astype(np.float64)

    def v_model(x: np.ndarray, t: float) -> np.ndarray:
        abar = alphas_cumprod[int(t)]
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        return ((eps_model(x, t) - s * x) / a).astype(np.float32)  # v = (eps - s x) / a

    temperature = Temperature(0.5, "tsr", sigma=0.2)
    latents = np.random.default_rng(5).standard_normal((2000, 1), dtype=np.float32)
    outs = []
    for ns, model in ((COSINE, eps_model), (v_schedule, v_model)):
        sampler = Sampler.create("ddim", ns, 100, spacing=SPACING, temperature=temperature)
        outs.append(drive(sampler.run(sampler.initial_latents(latents), lambda shape: None), model))
    np.testing.assert_allclose(outs[1], outs[0], atol=2e-4)


@pytest.mark.parametrize("name, options", [("ddim", {}), ("plms", {})])
def test_cns_needs_a_stochastic_sampler(name: str, options: dict) -> None:
    with pytest.raises(ValueError, match=rf"^Constant Noise Scaling needs a stochastic sampler and '{name}' "
                                         r"injects no noise: use --temperature-method tsr, or a sampler such as "
                                         r"euler_a or ddpm$"):
        Sampler.create(name, NoiseSchedule(), 10, temperature=Temperature(0.5, "cns"), **options)


class RecordingNoise:
    """A fixed standard-normal stream that records every draw it hands out, times `scale`."""

    def __init__(self, seed: int, scale: float = 1.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.scale = np.float32(scale)
        self.drawn: list[np.ndarray] = []

    def __call__(self, shape: tuple) -> np.ndarray:
        self.drawn.append(self.rng.standard_normal(shape, dtype=np.float32) * self.scale)
        return self.drawn[-1].copy()


def _linear_model(x: np.ndarray, timestep: float) -> np.ndarray:
    return x * np.float32(0.3) + np.float32(timestep / 2000.0)


@pytest.mark.parametrize("name, options", [("ddpm", {}), ("ddim", {"eta": 1.0}), ("euler_a", {})])
def test_cns_scales_initial_and_injected_noise_of_stochastic_samplers(name: str, options: dict) -> None:
    """CNS at T = 1/4 (k = 4) is the untempered sampler fed every noise (initial, img2img and injected) times
    1/sqrt(k) = 0.5: same latents, bit for bit (multiplying by 0.5 is exact)."""
    ns, steps, shape = NoiseSchedule(), 6, (2, 3)
    cns = Sampler.create(name, ns, steps, temperature=Temperature(0.25, "cns"), **options)
    plain = Sampler.create(name, ns, steps, **options)
    z = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    assert np.array_equal(cns.initial_latents(z), plain.initial_latents(z * np.float32(0.5)))
    x0 = np.full(shape, 0.7, np.float32)
    assert np.array_equal(cns.noised_latents(x0, z, 0.5)[0], plain.noised_latents(x0, z * np.float32(0.5), 0.5)[0])

    raw, halved = RecordingNoise(3), RecordingNoise(3, scale=0.5)
    tempered = drive(cns.run(cns.initial_latents(z), raw), _linear_model)
    expected = drive(plain.run(plain.initial_latents(z * np.float32(0.5)), halved), _linear_model)
    assert len(raw.drawn) >= steps - 1  # noise was injected (every step; euler_a: all but the last)
    assert np.array_equal(tempered, expected)
    assert not np.array_equal(tempered, drive(plain.run(plain.initial_latents(z * np.float32(0.5)),
                                                        RecordingNoise(3)), _linear_model))


@pytest.mark.parametrize("value", [0.0, -0.5, float("nan"), float("inf")])
def test_temperature_must_be_positive(value: float) -> None:
    with pytest.raises(ValueError, match=r"^temperature must be a positive number, got .*: use e\.g\. 0\.8 or 1\.2$"):
        Temperature(value)
