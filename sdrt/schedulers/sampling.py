"""The sampler interface: a sampler is a generator that asks for model evaluations and gets answers back.

    sampler = Sampler.create("dpmpp_2m", noise_schedule, steps=20, schedule="karras")
    x = sampler.initial_latents(noise)                 # or sampler.noised_latents(x0, noise, strength)
    loop = sampler.run(x, noise_source)
    call = next(loop)                                  # ModelCall(x, timestep, alpha_bar, step)
    while True:
        output = model(call.x, call.timestep)          # guidance happens here, in the caller
        try:
            call = loop.send(output)
        except StopIteration as done:
            latents = done.value
            break

The caller owns the loop, so progress bars, timing, cancellation and CUDA graphs live in one place (the
runtime's pipeline), and a sampler with two evaluations per step needs nothing special. Temperature is
applied here, between the caller and the sampler, so each sampler reads as its plain formula.
`sample()` runs the whole loop for a plain model function.

Arrays: a sampler never writes to an array it was sent or has yielded, and it may keep the outputs it was sent
(a multistep history), so send a fresh array for each call rather than a reused output buffer.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable, Generator, Protocol

import numpy as np

from .noise_schedule import NoiseSchedule
from .schedules import SIGMA_SCHEDULES, SPACINGS, Schedule
from .temperature import Temperature


@dataclass(frozen=True)
class ModelCall:
    """One request for a network evaluation."""

    x: np.ndarray  # latents exactly as the network must see them (VP scale); read-only, valid until the next send
    timestep: float  # the value for the network's timestep input (fractional for some schedules)
    alpha_bar: float  # noise level of this evaluation, abar = 1 / (1 + sigma^2)
    step: int  # index of the sampling step this evaluation belongs to


NoiseSource = Callable[[tuple], np.ndarray]
"""Returns standard-normal float32 noise of the given shape; called in a fixed, documented order."""


def as_noise_function(noise: NoiseSource | np.random.Generator) -> NoiseSource:
    """A noise function for `noise`: a function as it is, or a numpy Generator, which is drawn from as
    `generator.standard_normal(shape, dtype=numpy.float32)` once per noise the sampler asks for, in order."""
    if isinstance(noise, np.random.Generator):
        generator = noise
        return lambda shape: generator.standard_normal(shape, dtype=np.float32)
    if not callable(noise):
        raise TypeError(f"noise must be a function noise(shape) -> array or a numpy.random.Generator, "
                        f"got {type(noise).__name__}")
    return noise

StepEnd = Callable[[int, np.ndarray], np.ndarray]
"""Called by a sampler after step i with the new latents; returns the latents to continue from (inpainting)."""

SamplerLoop = Generator[ModelCall, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SamplerOption:
    """A sampler's numeric option: its default and the closed range [minimum, maximum] a value must lie in.

    Declared beside each sampler so that a value its formulas cannot use (NaN, eta > 1 in DDIM, whose noise
    would then exceed the step's variance) is refused with one line before sampling instead of turning the
    image black. Values must be finite unless `infinite` (s_tmax, whose default inf means "no upper limit").
    """

    default: float
    minimum: float = 0.0
    maximum: float = math.inf
    help: str = ""
    infinite: bool = False

    @property
    def range_text(self) -> str:
        """The accepted range as users read it: "in [0, 1]", ">= 0"."""
        if math.isinf(self.maximum):
            return f">= {_number(self.minimum)}" + (" or inf" if self.infinite else "")
        return f"in [{_number(self.minimum)}, {_number(self.maximum)}]"

    def check(self, sampler: str, name: str, value: object) -> float:
        """The value as a float, or a ValueError naming the accepted range."""
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = math.nan
        finite_ok = math.isfinite(number) or (self.infinite and number == math.inf)
        if not finite_ok or not self.minimum <= number <= self.maximum:
            raise ValueError(f"sampler option {name}={value} is out of range for {sampler!r}: {name} must be "
                             f"{self.range_text} (default {_number(self.default)})")
        return number


def _number(value: float) -> str:
    """1.0 -> "1", 0.5 -> "0.5", inf -> "inf": how option values read in messages and `sdrt samplers`."""
    return f"{value:g}"


OptionsCheck = Callable[[dict], None]
"""A check across a sampler's options (s_tmin <= s_tmax) that raises ValueError with a one-line message."""


class RunFn(Protocol):
    def __call__(self, x: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule, noise: NoiseSource,
                 *, start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop: ...


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler as the registry knows it. Families (vp, sigma, multistep) provide the callables."""

    name: str  # what users type: "dpmpp_2m"
    title: str  # what users read: "DPM++ 2M"
    stochastic: bool  # injects fresh noise while sampling (Constant Noise Scaling needs this)
    default_spacing: str  # the diffusers counterpart's class default
    build_schedule: Callable[[NoiseSchedule, int, str, str, str], Schedule]  # (ns, steps, schedule, spacing, family)
    run: RunFn
    init_noise_sigma: Callable[[Schedule, NoiseSchedule, str], float]  # (schedule, ns, spacing)
    add_noise: Callable[[np.ndarray, np.ndarray, Schedule, NoiseSchedule, int], np.ndarray]  # (x0, noise, sched, ns, step)
    diffusers_counterpart: str | None = None  # e.g. "DPMSolverMultistepScheduler(algorithm_type='dpmsolver++')"
    options: dict[str, SamplerOption] = field(default_factory=dict)  # sampler-specific options (eta, s_noise, ...)
    schedules: tuple[str, ...] = SIGMA_SCHEDULES  # sigma schedules this sampler supports
    # img2img that rebuilds the schedule for a strength and runs every step, instead of skipping the first
    # ones (diffusers' LCM img2img): (ns, steps, strength) -> Schedule. None: timesteps[start_step:].
    strength_schedule: Callable[[NoiseSchedule, int, float], Schedule] | None = None
    check_options: OptionsCheck | None = None  # a check across options, after each is in its range

    @property
    def option_defaults(self) -> dict[str, float]:
        return {name: option.default for name, option in self.options.items()}

    def resolve_options(self, options: dict) -> dict[str, float]:
        """The defaults overridden by the user's options, each checked; ValueError names an unknown option
        (with the sampler's options) or the accepted range."""
        unknown = set(options) - set(self.options)
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"sampler {self.name!r} has no option {sorted(unknown)[0]!r} (options: {allowed})")
        merged = self.option_defaults
        for name in sorted(options):
            merged[name] = self.options[name].check(self.name, name, options[name])
        if self.check_options is not None:
            self.check_options(merged)
        return merged


REGISTRY: dict[str, SamplerSpec] = {}


def register(spec: SamplerSpec) -> SamplerSpec:
    REGISTRY[spec.name] = spec
    return spec


def sampler_names() -> list[str]:
    return sorted(REGISTRY)


def get_spec(name: str) -> SamplerSpec:
    """The registered sampler, or a ValueError that suggests the closest name."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_").replace("++", "pp")
    if key in REGISTRY:
        return REGISTRY[key]
    close = difflib.get_close_matches(key, REGISTRY, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown sampler {name!r}: {hint}choose one of {', '.join(sampler_names())}")


def _identity_step_end(step: int, x: np.ndarray) -> np.ndarray:
    return x


class Sampler:
    """A sampler bound to a model's noise schedule, a step count, a schedule and a temperature."""

    def __init__(self, spec: SamplerSpec, noise_schedule: NoiseSchedule, schedule: Schedule, spacing: str,
                 options: dict, temperature: Temperature, model_family: str = "sd1") -> None:
        self.spec = spec
        self.noise_schedule = noise_schedule
        self.schedule = schedule
        self.spacing = spacing
        self.options = options
        self.temperature = temperature
        self.model_family = model_family

    @classmethod
    def create(cls, name: str, noise_schedule: NoiseSchedule, steps: int, schedule: str = "normal",
               spacing: str | None = None, temperature: Temperature | None = None, model_family: str = "sd1",
               **options: float) -> "Sampler":
        """Validate the user's choices and build the schedule, with one-line errors that name the fix."""
        spec = get_spec(name)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
        if steps > noise_schedule.num_train_timesteps:  # more levels than the model was trained on
            raise ValueError(f"steps must be at most num_train_timesteps ({noise_schedule.num_train_timesteps}), "
                             f"got {steps}")
        if schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SIGMA_SCHEDULES)}")
        if schedule not in spec.schedules:
            raise ValueError(f"sampler {spec.name!r} does not support the {schedule!r} schedule: "
                             f"choose one of {', '.join(spec.schedules)}")
        spacing = spacing or noise_schedule.timestep_spacing or spec.default_spacing
        if spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
        merged = spec.resolve_options(options)
        temperature = temperature or Temperature()
        stochastic = spec.stochastic or float(merged.get("eta", 0.0)) > 0 or float(merged.get("s_churn", 0.0)) > 0
        if temperature.method == "cns" and not temperature.is_identity and not stochastic:
            raise ValueError(f"Constant Noise Scaling needs a stochastic sampler and {spec.name!r} injects no "
                             "noise: use --temperature-method tsr, or a sampler such as euler_a or ddpm")
        built = spec.build_schedule(noise_schedule, steps, schedule, spacing, model_family)
        return cls(spec, noise_schedule, built, spacing, merged, temperature, model_family)

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def timesteps(self) -> np.ndarray:
        return self.schedule.timesteps

    def initial_latents(self, noise: np.ndarray) -> np.ndarray:
        """Starting latents for txt2img from standard-normal noise (init_noise_sigma, and CNS's 1/sqrt(k))."""
        if self.spec.strength_schedule is not None:  # undo an earlier noised_latents' strength schedule
            self.schedule = self.spec.strength_schedule(self.noise_schedule, self.num_steps, 1.0)
        scale = self.spec.init_noise_sigma(self.schedule, self.noise_schedule, self.spacing)
        scale *= self.temperature.noise_scale
        return (noise * np.float32(scale)).astype(np.float32, copy=False)

    def start_step(self, strength: float) -> int:
        """First step for img2img at `strength`, with diffusers' rounding (strength 1 starts from pure noise)."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        n = self.num_steps
        start = max(n - min(int(n * strength), n), 0)
        if start >= n:
            raise ValueError(f"strength {strength} with {n} steps leaves no step to run: raise --strength or --steps")
        return start

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, step: int) -> np.ndarray:
        """x0 noised to the level the sampler expects at `step` (img2img start, inpaint blending)."""
        return self.spec.add_noise(x0, noise, self.schedule, self.noise_schedule, step)

    def noised_latents(self, x0: np.ndarray, noise: np.ndarray, strength: float) -> tuple[np.ndarray, int]:
        """img2img start: (latents, first step) for clean latents x0 and standard-normal noise.

        For a sampler with a `strength_schedule` (LCM) this replaces the schedule (initial_latents restores the
        full one) and returns step 0."""
        if self.spec.strength_schedule is not None:
            if not 0.0 < strength <= 1.0:
                raise ValueError(f"strength must be in (0, 1], got {strength}")
            self.schedule = self.spec.strength_schedule(self.noise_schedule, self.num_steps, strength)
            start = 0
        else:
            start = self.start_step(strength)
        return self.add_noise(x0, noise * np.float32(self.temperature.noise_scale), start), start

    def run(self, x: np.ndarray, noise: NoiseSource | np.random.Generator, start_step: int = 0,
            end_step: StepEnd | None = None) -> SamplerLoop:
        """The sampling loop as a generator (see the module docstring); returns the final latents.
        `noise` is a function or a numpy Generator (see `as_noise_function`)."""
        noise = as_noise_function(noise)
        scale = self.temperature.noise_scale
        if scale != 1.0:
            raw_noise = noise

            def noise(shape: tuple) -> np.ndarray:  # noqa: F811 - CNS: every injected noise scaled by 1/sqrt(k)
                return raw_noise(shape) * np.float32(scale)

        loop = self.spec.run(x, self.schedule, self.noise_schedule, noise, start_step=start_step,
                             end_step=end_step or _identity_step_end, options=self.options)
        if self.temperature.method != "tsr" or self.temperature.is_identity:
            return loop
        return self._with_tsr(loop)

    def _with_tsr(self, loop: SamplerLoop) -> SamplerLoop:
        prediction_type = self.noise_schedule.prediction_type
        call = next(loop)
        while True:
            output = yield call
            output = self.temperature.rescale_output(output, call.x, call.alpha_bar, prediction_type)
            try:
                call = loop.send(output)
            except StopIteration as done:
                return done.value


ModelFn = Callable[[np.ndarray, float], np.ndarray]


def drive(loop: SamplerLoop, model: ModelFn) -> np.ndarray:
    """Run a sampler loop to the end with `model(x, timestep) -> prediction`."""
    try:
        call = next(loop)
        while True:
            call = loop.send(model(call.x, call.timestep))
    except StopIteration as done:
        return done.value


def sample(name: str, model: ModelFn, latents: np.ndarray, noise: NoiseSource | np.random.Generator,
           noise_schedule: NoiseSchedule, steps: int, schedule: str = "normal", spacing: str | None = None,
           temperature: Temperature | None = None, model_family: str = "sd1", **options: float) -> np.ndarray:
    """Sample from standard-normal `latents` with any sampler and a plain numpy model function.

    `model(x, timestep)` returns the network's prediction (in the noise schedule's prediction_type) for the
    latents x at that timestep; `noise` supplies every injected noise, in order: a function `noise(shape)`,
    or a `numpy.random.Generator`, drawn from as `standard_normal(shape, dtype=float32)` per injected noise
    (deterministic samplers draw nothing). No engine needed.
    """
    sampler = Sampler.create(name, noise_schedule, steps, schedule, spacing, temperature, model_family, **options)
    return drive(sampler.run(sampler.initial_latents(latents), noise), model)
