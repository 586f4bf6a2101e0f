"""Shared machinery for scheduler parity tests: one synthetic model, one noise stream, and the diffusers loop.

Both sides see the same model function, the same initial latents and the same injected noise, so any
difference in the final latents is a difference in the sampler arithmetic.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator

import numpy as np
import torch

from sdrt.schedulers import NoiseSchedule, Sampler, drive

SHAPE = (2, 4, 8, 8)
SD1_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  steps_offset=1)


def synthetic_model(x: np.ndarray, t: float) -> np.ndarray:
    """A smooth, nonlinear, timestep-dependent stand-in for a UNet (works as eps, v or x0 prediction)."""
    x = np.asarray(x, dtype=np.float32)
    phase = np.float32(np.sin(float(t) / 137.0))
    return (0.8 * np.tanh(0.5 * x + phase) + 0.1 * x * phase).astype(np.float32)


class NoiseStream:
    """Standard-normal float32 draws in call order from a seeded generator; a second instance with the same
    seed replays the same sequence for the other side."""

    def __init__(self, seed: int = 1234) -> None:
        self.rng = np.random.default_rng(seed)
        self.draws = 0

    def __call__(self, shape: tuple) -> np.ndarray:
        self.draws += 1
        return self.rng.standard_normal(tuple(shape), dtype=np.float32)


def initial_noise(seed: int = 7, shape: tuple = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@contextlib.contextmanager
def diffusers_noise(module_name: str, stream: NoiseStream) -> Iterator[None]:
    """Replace `randn_tensor` inside one diffusers scheduler module with draws from `stream`."""
    module = importlib.import_module(f"diffusers.schedulers.{module_name}")
    original = module.randn_tensor

    def fake_randn(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **_: Any) -> torch.Tensor:
        return torch.from_numpy(stream(tuple(shape))).to(dtype or torch.float32)

    module.randn_tensor = fake_randn
    try:
        yield
    finally:
        module.randn_tensor = original


def run_diffusers(scheduler: Any, steps: int, latents: np.ndarray, model=synthetic_model, **step_kwargs: Any) -> np.ndarray:
    """The txt2img loop of diffusers' StableDiffusionPipeline around `scheduler`, with a numpy model."""
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(latents.copy()) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        out = torch.from_numpy(model(x_in.numpy(), float(t)))
        x = scheduler.step(out, t, x, return_dict=False, **step_kwargs)[0]
    return x.numpy()


def run_sdrt(name: str, steps: int, latents: np.ndarray, config: dict, noise: NoiseStream | None = None,
             model=synthetic_model, **kwargs: Any) -> np.ndarray:
    ns = NoiseSchedule.from_config(config)
    sampler = Sampler.create(name, ns, steps, **kwargs)
    return drive(sampler.run(sampler.initial_latents(latents), noise or NoiseStream()), model)


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|: the figure the parity tolerances are stated in."""
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


def diffusers_loop(scheduler: Any, x: torch.Tensor, timesteps: Any, model=synthetic_model,
                   **step_kwargs: Any) -> np.ndarray:
    """The denoising loop of diffusers' SD pipelines over `timesteps`, from latents `x` already scaled or noised
    (order-2 schedulers list their timesteps twice, so one iteration is one model call, as in the pipelines)."""
    for t in timesteps:
        x_in = scheduler.scale_model_input(x, t)
        out = torch.from_numpy(model(x_in.numpy(), float(t)))
        x = scheduler.step(out, t, x, return_dict=False, **step_kwargs)[0]
    return x.numpy()


def run_diffusers_img2img(scheduler: Any, steps: int, strength: float, x0: np.ndarray, noise: np.ndarray,
                          model=synthetic_model, **step_kwargs: Any) -> np.ndarray:
    """StableDiffusionImg2ImgPipeline's schedule cut (get_timesteps), add_noise and loop around `scheduler`."""
    scheduler.set_timesteps(steps)
    t_start = max(steps - min(int(steps * strength), steps), 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    scheduler.set_begin_index(t_start * scheduler.order)
    x = scheduler.add_noise(torch.from_numpy(x0.copy()), torch.from_numpy(noise.copy()), timesteps[:1])
    return diffusers_loop(scheduler, x, timesteps, model, **step_kwargs)


def run_sdrt_img2img(name: str, steps: int, strength: float, x0: np.ndarray, noise_latents: np.ndarray, config: dict,
                     noise: NoiseStream | None = None, model=synthetic_model, **kwargs: Any) -> np.ndarray:
    sampler = Sampler.create(name, NoiseSchedule.from_config(config), steps, **kwargs)
    latents, start = sampler.noised_latents(x0, noise_latents, strength)
    return drive(sampler.run(latents, noise or NoiseStream(), start_step=start), model)
