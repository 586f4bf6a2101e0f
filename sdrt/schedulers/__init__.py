"""numpy-only samplers that reproduce diffusers' schedulers. Importing this never imports torch or scipy.

Entry points: `Sampler.create(...)` + `Sampler.run(...)` (a generator the caller drives, one model call per
yield) and `sample(...)` (the whole loop over a plain model function). See sampling.py.
"""

from . import k_samplers, multistep, vp_samplers  # noqa: F401  (each registers its samplers)
from .noise_schedule import NoiseSchedule
from .sampling import REGISTRY, ModelCall, Sampler, SamplerSpec, drive, get_spec, sample, sampler_names
from .schedules import SIGMA_SCHEDULES, SPACINGS, Schedule
from .temperature import Temperature, tsr_ratio

__all__ = [
    "REGISTRY", "SIGMA_SCHEDULES", "SPACINGS", "ModelCall", "NoiseSchedule", "Sampler", "SamplerSpec",
    "Schedule", "Temperature", "drive", "get_spec", "sample", "sampler_names", "tsr_ratio",
]
