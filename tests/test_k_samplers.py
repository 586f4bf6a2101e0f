"""The sigma-space samplers (sdrt/schedulers/k_samplers.py) against their diffusers schedulers.

Both sides get the same synthetic model, the same initial latents and the same injected noise (tests/parity.py);
the final latents must agree within relative 1e-5 (max |ours - ref| / max |ref|, float32), except:
- lms: 2e-5 (measured: 8e-6 epsilon, 1.0e-5 v_prediction). The integration is not the reason: scipy's quad
  integrates the cubic Lagrange basis exactly (its first 21-point Kronrod rule is exact to degree 31), and our
  weights agree with diffusers' to 1e-6, its integrand being float32 (test_lms_coefficients_are_exact).
  diffusers forms each slope as (x - (x - sigma * eps)) / sigma, which cancels in float32 at small sigma, and
  LMS reuses slopes with weights up to ~2.3: against the same arithmetic in float64, diffusers' own float32
  result is off by up to 9e-6 on this grid, ours by 6e-6 (we form eps directly).
- dpmpp_sde: diffusers draws its noise from a torchsde Brownian tree, which numpy cannot reproduce; the tests
  replace that tree with i.i.d. draws from the shared stream (two per step, in call order), as our sampler does.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import math
import re
import sys
import types
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
from diffusers import (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
                       KDPM2DiscreteScheduler, LMSDiscreteScheduler)

from sdrt.schedulers import NoiseSchedule, Sampler, Temperature, sample
from sdrt.schedulers.k_samplers import lms_coefficients
from sdrt.schedulers.schedules import ays_sigmas
from tests.parity import (SD1_CONFIG, NoiseStream, diffusers_loop, diffusers_noise, initial_noise, rel_error,
                          run_diffusers, run_diffusers_img2img, run_sdrt, run_sdrt_img2img, synthetic_model)

STEPS = (1, 2, 3, 10, 25, 50)
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction")
TOLERANCE = 1e-5
LMS_TOLERANCE = 2e-5

# diffusers' _sigma_to_t feeds torch tensors to numpy, which warns on every call under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


def _dpmsolver_sde_module() -> types.ModuleType:
    """diffusers' DPMSolverSDEScheduler module imports torchsde at the top, for the Brownian tree alone; these
    tests replace that tree, so without torchsde installed a placeholder module is enough to import it."""
    name = "diffusers.schedulers.scheduling_dpmsolver_sde"
    if name in sys.modules or importlib.util.find_spec("torchsde") is not None:
        return importlib.import_module(name)
    sys.modules["torchsde"] = types.ModuleType("torchsde")
    try:
        return importlib.import_module(name)
    finally:
        del sys.modules["torchsde"]


@contextlib.contextmanager
def iid_brownian_noise(stream: NoiseStream) -> Iterator[None]:
    """DPMSolverSDEScheduler with i.i.d. standard normals from `stream` in place of its Brownian-tree increments."""
    module = _dpmsolver_sde_module()
    original = module.BrownianTreeNoiseSampler

    class IIDNoise:
        def __init__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            self.shape = tuple(x.shape)

        def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
            return torch.from_numpy(stream(self.shape))

    module.BrownianTreeNoiseSampler = IIDNoise
    try:
        yield
    finally:
        module.BrownianTreeNoiseSampler = original


def _no_noise(stream: NoiseStream) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _randn_in(module: str) -> Callable[[NoiseStream], contextlib.AbstractContextManager]:
    return lambda stream: diffusers_noise(module, stream)


# sampler -> (diffusers class, how its noise is injected, sigma schedules the class offers besides normal)
COUNTERPARTS: dict[str, tuple[Callable[..., Any], Callable, tuple[str, ...]]] = {
    "euler": (EulerDiscreteScheduler, _randn_in("scheduling_euler_discrete"), ("karras", "exponential")),
    "euler_a": (EulerAncestralDiscreteScheduler, _randn_in("scheduling_euler_ancestral_discrete"), ()),
    "heun": (HeunDiscreteScheduler, _no_noise, ("karras", "exponential")),
    "dpm2": (KDPM2DiscreteScheduler, _no_noise, ("karras", "exponential")),
    "lms": (LMSDiscreteScheduler, _no_noise, ("karras", "exponential")),
    "dpmpp_sde": (lambda **kw: _dpmsolver_sde_module().DPMSolverSDEScheduler(**kw), iid_brownian_noise,
                  ("karras", "exponential")),
}
SCHEDULE_FLAGS = {"normal": {}, "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True}}


def _config(prediction_type: str = "epsilon", spacing: str = "linspace") -> dict:
    return dict(SD1_CONFIG, prediction_type=prediction_type, timestep_spacing=spacing)


def _diffusers_scheduler(name: str, config: dict, schedule: str = "normal") -> Any:
    """A fresh diffusers scheduler; copied from a cached one because Heun's, KDPM2's and DPMSolverSDE's
    constructors build a 1000-step schedule slowly."""
    key = (name, schedule, *sorted(config.items()))
    if key not in _SCHEDULERS:
        _SCHEDULERS[key] = COUNTERPARTS[name][0](**config, **SCHEDULE_FLAGS[schedule])
    return copy.deepcopy(_SCHEDULERS[key])


_SCHEDULERS: dict[tuple, Any] = {}


def _reference(name: str, steps: int, latents: np.ndarray, config: dict, schedule: str = "normal",
               **step_kwargs: Any) -> np.ndarray:
    stream = NoiseStream()
    with COUNTERPARTS[name][1](stream):
        return run_diffusers(_diffusers_scheduler(name, config, schedule), steps, latents, **step_kwargs)


def _tolerance(name: str) -> float:
    return LMS_TOLERANCE if name == "lms" else TOLERANCE


PARITY_CASES = [
    pytest.param(name, prediction, spacing, schedule, id=f"{name}-{prediction}-{spacing}-{schedule}")
    for name, (_, _, schedules) in COUNTERPARTS.items()
    for prediction in PREDICTIONS
    for spacing in SPACINGS
    for schedule in ("normal", *schedules)
]


@pytest.mark.parametrize("name, prediction, spacing, schedule", PARITY_CASES)
def test_txt2img_matches_diffusers(name: str, prediction: str, spacing: str, schedule: str) -> None:
    latents = initial_noise()
    config = _config(prediction, spacing)
    errors = {}
    for steps in STEPS:
        ref = _reference(name, steps, latents, config, schedule)
        ours = run_sdrt(name, steps, latents, config, noise=NoiseStream(), schedule=schedule)
        errors[steps] = rel_error(ours, ref)
    assert max(errors.values()) <= _tolerance(name), f"relative error by step count: {errors}"


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("steps", [10, 20])
def test_euler_ays_matches_diffusers_with_the_same_sigmas(steps: int, prediction: str) -> None:
    """diffusers has no AYS flag; EulerDiscreteScheduler.set_timesteps(sigmas=...) takes the same sigma list."""
    sigmas = ays_sigmas("sd1", steps + 1)
    sigmas[-1] = 0.0
    config = _config(prediction)
    scheduler = EulerDiscreteScheduler(**config)
    scheduler.set_timesteps(sigmas=sigmas.tolist())
    latents = initial_noise()
    ref = diffusers_loop(scheduler, torch.from_numpy(latents) * scheduler.init_noise_sigma, scheduler.timesteps)
    ours = run_sdrt("euler", steps, latents, config, schedule="ays")
    assert rel_error(ours, ref) <= TOLERANCE


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("s_churn, s_tmin, s_tmax, s_noise", [(1.0, 0.0, math.inf, 1.0), (40.0, 0.5, 5.0, 1.003)])
def test_euler_churn_matches_diffusers(prediction: str, s_churn: float, s_tmin: float, s_tmax: float,
                                       s_noise: float) -> None:
    options = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    latents, config = initial_noise(), _config(prediction, "leading")
    for steps in (3, 25):
        ref = _reference("euler", steps, latents, config, **options)
        ours = run_sdrt("euler", steps, latents, config, noise=NoiseStream(), **options)
        assert rel_error(ours, ref) <= TOLERANCE, steps


def test_dpmpp_sde_s_noise_matches_diffusers() -> None:
    latents, config = initial_noise(), _config("epsilon", "trailing")
    ref = _reference("dpmpp_sde", 10, latents, config, "karras", s_noise=0.8)
    ours = run_sdrt("dpmpp_sde", 10, latents, config, noise=NoiseStream(), schedule="karras", s_noise=0.8)
    assert rel_error(ours, ref) <= TOLERANCE


IMG2IMG_CASES = [
    pytest.param(name, prediction, spacing, id=f"{name}-{prediction}-{spacing}")
    for name in COUNTERPARTS if name != "lms"
    for prediction, spacing in (("epsilon", "leading"), ("v_prediction", "linspace"))
]


@pytest.mark.parametrize("name, prediction, spacing", IMG2IMG_CASES)
def test_img2img_matches_diffusers(name: str, prediction: str, spacing: str) -> None:
    """Start step, add-noise sigma and, for the order-2 schedulers, the doubled timestep index all agree."""
    x0 = np.tanh(initial_noise(seed=3))
    noise = initial_noise(seed=4)
    config = _config(prediction, spacing)
    for steps, strength in ((10, 0.3), (25, 0.75), (3, 1.0)):
        stream = NoiseStream()
        with COUNTERPARTS[name][1](stream):
            ref = run_diffusers_img2img(_diffusers_scheduler(name, config), steps, strength, x0, noise)
        ours = run_sdrt_img2img(name, steps, strength, x0, noise, config, noise=NoiseStream())
        assert rel_error(ours, ref) <= TOLERANCE, (steps, strength)


@pytest.mark.parametrize("steps, strength", [(10, 0.3), (25, 0.75)])
def test_lms_img2img_warms_up_from_first_order(steps: int, strength: float) -> None:
    """Our LMS starting at step k equals diffusers' LMS run over the schedule cut at k (which warms up from
    order 1). diffusers' own img2img instead starts with the order-(k+1) weights and only the newest slope,
    which overshoots; we deliberately differ there (see k_samplers.py)."""
    x0, noise = np.tanh(initial_noise(seed=3)), initial_noise(seed=4)
    config = _config("epsilon", "leading")
    scheduler = LMSDiscreteScheduler(**config)
    scheduler.set_timesteps(steps)
    start = max(steps - int(steps * strength), 0)
    scheduler.sigmas, scheduler.timesteps = scheduler.sigmas[start:], scheduler.timesteps[start:]
    x = torch.from_numpy(x0 + noise * scheduler.sigmas[0].numpy())
    ref = diffusers_loop(scheduler, x, scheduler.timesteps)
    ours = run_sdrt_img2img("lms", steps, strength, x0, noise, config)
    assert rel_error(ours, ref) <= LMS_TOLERANCE
    quirky = run_diffusers_img2img(LMSDiscreteScheduler(**config), steps, strength, x0, noise)
    assert rel_error(ours, quirky) > 1e-3  # the diffusers img2img warm-up differs visibly


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", ["normal", "karras", "exponential"])
def test_lms_coefficients_are_exact(spacing: str, schedule: str) -> None:
    """Exact integrals of the Lagrange basis; diffusers' quadrature of the same (float32 integrand) within 1e-6.
    Checked independently too: the weights integrate tau^k exactly for k < order."""
    steps = 25
    scheduler = LMSDiscreteScheduler(**_config("epsilon", spacing), **SCHEDULE_FLAGS[schedule])
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.numpy()
    for i in range(steps - 1):
        order = min(i + 1, 4)
        ours = lms_coefficients(sigmas, [i], order)[0]
        ref = np.array([scheduler.get_lms_coefficient(order, i, j) for j in range(order)])
        assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max(), i
        nodes = sigmas[i - order + 1:i + 1][::-1].astype(np.float64)
        a, b = float(sigmas[i]), float(sigmas[i + 1])
        for k in range(order):
            assert ours @ nodes**k == pytest.approx((b ** (k + 1) - a ** (k + 1)) / (k + 1), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("name", "schedule"), [
    (name, schedule) for name in COUNTERPARTS for schedule in ("normal", "karras")
    if not (name == "euler_a" and schedule == "karras")  # EulerAncestralDiscreteScheduler has no Karras sigmas
])
def test_model_calls_follow_diffusers_timesteps(name: str, schedule: str) -> None:
    """One ModelCall per diffusers timestep (order-2 schedulers list theirs twice), with the same timestep and
    input scale, and `step` naming the sampling step each call belongs to."""
    steps = 6
    config = _config("epsilon", "leading")
    scheduler = _diffusers_scheduler(name, config, schedule)
    scheduler.set_timesteps(steps)
    sampler = Sampler.create(name, NoiseSchedule.from_config(config), steps, schedule=schedule)
    x = sampler.initial_latents(initial_noise())
    assert sampler.spec.init_noise_sigma(sampler.schedule, sampler.noise_schedule, "leading") == pytest.approx(
        float(scheduler.init_noise_sigma), rel=1e-7)
    calls = []
    loop = sampler.run(x, NoiseStream())
    with COUNTERPARTS[name][1](NoiseStream()):
        try:
            call = next(loop)
            while True:
                calls.append(call)
                call = loop.send(synthetic_model(call.x, call.timestep))
        except StopIteration:
            pass
    assert len(calls) == len(scheduler.timesteps) == (steps if name in ("euler", "euler_a", "lms") else 2 * steps - 1)
    np.testing.assert_allclose([c.timestep for c in calls], scheduler.timesteps.numpy(), rtol=0, atol=1e-3)
    if len(calls) == steps:
        assert [c.step for c in calls] == list(range(steps))
    else:  # two calls per step, one on the last (Euler down to sigma 0)
        assert [c.step for c in calls] == sorted([*range(steps - 1), *range(steps)])


def test_noise_draws_per_sampler() -> None:
    """Which samplers inject noise, and how many draws: euler_a skips diffusers' unused draw on the final step."""
    config, steps = _config(), 7
    expected = {"euler": 0, "euler_a": steps - 1, "heun": 0, "dpm2": 0, "lms": 0, "dpmpp_sde": 2 * (steps - 1)}
    for name, draws in expected.items():
        stream = NoiseStream()
        run_sdrt(name, steps, initial_noise(), config, noise=stream)
        assert stream.draws == draws, name
    stream = NoiseStream()
    run_sdrt("euler", steps, initial_noise(), config, noise=stream, s_churn=1.0)
    assert stream.draws == steps


GAUSSIAN_STD = 0.5


def _gaussian_model(prediction_type: str) -> Callable[[Any], np.ndarray]:
    """The exact network for data ~ N(0, c^2): E[eps | x_t] = s x_t / (abar c^2 + 1 - abar), in the requested
    parameterization (v = a eps - s x0, x0 = (x_t - s eps) / a)."""
    def model(call: Any) -> np.ndarray:
        ab = call.alpha_bar
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
        eps = call.x * np.float32(s / (ab * GAUSSIAN_STD**2 + 1 - ab))
        if prediction_type == "epsilon":
            return eps
        x0 = (call.x - s * eps) / np.float32(a)
        return (a * eps - s * x0).astype(np.float32) if prediction_type == "v_prediction" else x0
    return model


def _drive_calls(loop: Any, model: Callable[[Any], np.ndarray]) -> np.ndarray:
    try:
        call = next(loop)
        while True:
            call = loop.send(model(call))
    except StopIteration as done:
        return done.value


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name, order", [("euler", 1), ("heun", 2), ("dpm2", 2), ("lms", 3)])
def test_deterministic_samplers_solve_the_gaussian_ode(name: str, order: int, prediction: str) -> None:
    """For Gaussian data the probability-flow ODE has the closed form x(sigma) ~ sqrt(c^2 + sigma^2), so
    x(0) = x(sigma_0) * c / sqrt(c^2 + sigma_0^2). The samplers converge to it at (at least) their order."""
    ns = NoiseSchedule.from_config(_config(prediction))
    x_start = initial_noise(shape=(4096,)).astype(np.float32) * np.float32(14.0)
    errors = []
    for steps in (12, 24):
        sampler = Sampler.create(name, ns, steps, schedule="karras")
        sigma0 = float(sampler.schedule.sigmas[0])
        exact = x_start.astype(np.float64) * GAUSSIAN_STD / math.sqrt(GAUSSIAN_STD**2 + sigma0**2)
        result = _drive_calls(sampler.run(x_start, NoiseStream()), _gaussian_model(prediction))
        errors.append(np.abs(result - exact).max() / np.abs(exact).max())
    assert errors[1] < 0.1
    assert errors[0] / errors[1] > 2 ** order * 0.8, errors


def test_end_step_sees_every_step_once_and_its_result_is_used() -> None:
    """Inpainting hooks in after each step (not after each model call): its return value is what continues."""
    seen: list[int] = []

    def end_step(i: int, x: np.ndarray) -> np.ndarray:
        seen.append(i)
        return np.zeros_like(x) if i == 3 else x

    sampler = Sampler.create("heun", NoiseSchedule.from_config(_config()), 8)
    loop = sampler.run(sampler.initial_latents(initial_noise()), NoiseStream(), start_step=2, end_step=end_step)
    inputs_after_reset = []
    try:
        call = next(loop)
        while True:
            if call.step == 4 and not inputs_after_reset:
                inputs_after_reset.append(call.x)
            call = loop.send(synthetic_model(call.x, call.timestep))
    except StopIteration:
        pass
    assert seen == [2, 3, 4, 5, 6, 7]
    assert not inputs_after_reset[0].any()


def test_sampler_inputs_are_never_modified() -> None:
    latents = initial_noise()
    kept = latents.copy()
    sample("lms", synthetic_model, latents, NoiseStream(), NoiseSchedule.from_config(_config()), 6)
    np.testing.assert_array_equal(latents, kept)


def test_negative_churn_is_refused() -> None:
    message = "sampler option s_churn=-1.0 is out of range for 'euler': s_churn must be >= 0 (default 0)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        sample("euler", synthetic_model, initial_noise(), NoiseStream(), NoiseSchedule.from_config(_config()), 4,
               s_churn=-1.0)


def test_unknown_option_names_the_sampler_options() -> None:
    with pytest.raises(ValueError, match=r"sampler 'heun' has no option 's_churn' \(options: none\)"):
        Sampler.create("heun", NoiseSchedule.from_config(_config()), 4, s_churn=1.0)


def test_constant_noise_scaling_reaches_euler_churn_noise() -> None:
    """Churn makes euler stochastic, so CNS applies: the start and every churn draw scaled by sqrt(T)."""
    ns, temperature = NoiseSchedule.from_config(_config()), 0.64
    ours = sample("euler", synthetic_model, initial_noise(), NoiseStream(), ns, 6, s_churn=2.0,
                  temperature=Temperature(temperature, "cns"))
    stream = NoiseStream()
    scaled = sample("euler", synthetic_model, initial_noise() * np.float32(0.8), lambda shape: stream(shape) * 0.8,
                    ns, 6, s_churn=2.0)
    np.testing.assert_allclose(ours, scaled, rtol=1e-6, atol=1e-6)
    assert not np.allclose(ours, sample("euler", synthetic_model, initial_noise(), NoiseStream(), ns, 6,
                                        s_churn=2.0), atol=1e-3)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("clip_range", [1.0, 0.5])
def test_heun_clip_sample_matches_diffusers(prediction: str, clip_range: float) -> None:
    """A config with clip_sample true makes HeunDiscreteScheduler clamp x0; sdrt's heun follows the key."""
    latents = initial_noise()
    config = dict(_config(prediction), clip_sample=True, clip_sample_range=clip_range)
    unclipped = run_sdrt("heun", 10, latents, _config(prediction), noise=NoiseStream())
    for steps in (1, 3, 10):
        ref = _reference("heun", steps, latents, config)
        ours = run_sdrt("heun", steps, latents, config, noise=NoiseStream())
        assert rel_error(ours, ref) <= TOLERANCE, steps
    assert rel_error(ours, unclipped) > 1e-3  # the clamp really acts on this model, so parity means something
