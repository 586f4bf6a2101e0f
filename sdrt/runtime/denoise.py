"""The denoising loop: the sampler generator driven with a guided UNet, and inpainting's latent blend.

Kept apart from the pipeline so the loop that runs once per step is short and can be timed and benchmarked
on its own (bench/host_overhead.py drives it with a UNet stub).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..schedulers import Sampler
from ..backends.engine import Engine, run_engine
from .guidance import apply_cfg, uses_cfg
from .text import Conditioning

Progress = Callable[[int, int], None]  # (steps done, steps total)
NoiseSource = Callable[[tuple], np.ndarray]
StepEnd = Callable[[int, np.ndarray], np.ndarray]


def run_sampler(sampler: Sampler, x: np.ndarray, noise: NoiseSource, start: int, end_step: StepEnd | None,
                model: Callable[[np.ndarray, float], np.ndarray], progress: Progress | None = None) -> np.ndarray:
    """Drive the sampler generator from step `start` with `model(x, t)`, reporting finished steps."""
    total = sampler.num_steps - start
    loop = sampler.run(x, noise, start_step=start, end_step=end_step)
    reported = 0
    try:
        call = next(loop)
        while True:
            done = call.step - start
            if progress is not None and done > reported:
                progress(done, total)
                reported = done
            call = loop.send(model(call.x, call.timestep))
    except StopIteration as finished:
        latents = finished.value
    if progress is not None:
        progress(total, total)
    return np.asarray(latents, dtype=np.float32)


class GuidedUNet:
    """model(x, t) for the sampler: fills fixed input buffers, runs the UNet, applies CFG.

    The returned array is always new (never the engine's buffer), since multistep samplers keep past outputs.
    One per generation: its input buffers are its own, so generations on many threads do not share them.
    """

    def __init__(self, engine: Engine, cond: Conditioning, batch: int, scale: float, rescale: float,
                 extra_channels: np.ndarray | None) -> None:
        self.engine = engine
        self.batch = batch
        self.scale = scale
        self.rescale = rescale
        self.cfg = uses_cfg(scale)
        self.copies = 2 if self.cfg else 1
        self.extra = extra_channels
        self.sample: np.ndarray | None = None
        self.timestep = np.zeros(batch * self.copies, dtype=np.float32)
        self.cond = cond.feeds()
        self.seconds = 0.0
        self.calls = 0

    def _buffer(self, x: np.ndarray) -> np.ndarray:
        if self.sample is None:
            channels = x.shape[1] + (0 if self.extra is None else self.extra.shape[1])
            self.sample = np.empty((x.shape[0] * self.copies, channels, *x.shape[2:]), dtype=np.float32)
            if self.extra is not None:
                self.sample[:, x.shape[1]:] = np.concatenate([self.extra] * self.copies)
        return self.sample

    def __call__(self, x: np.ndarray, timestep: float) -> np.ndarray:
        sample = self._buffer(x)
        latent_channels, b = x.shape[1], self.batch
        for k in range(self.copies):
            sample[k * b:(k + 1) * b, :latent_channels] = x
        self.timestep.fill(timestep)
        t0 = time.perf_counter()
        out = run_engine(self.engine, {"sample": sample, "timestep": self.timestep, **self.cond})["out_sample"]
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        if self.cfg:
            return apply_cfg(np.asarray(out, dtype=np.float32), self.scale, self.rescale)
        return np.asarray(out, dtype=np.float32)  # run_engine's copy: the caller's own array


class LatentBlend:
    """Legacy (4-channel UNet) inpainting: after step i keep the known region from the image latents noised
    to step i+1's level with the initial noise, or the clean latents after the last step (diffusers)."""

    def __init__(self, sampler: Sampler, image_latents: np.ndarray, noise: np.ndarray, mask: np.ndarray) -> None:
        self.sampler = sampler
        self.image_latents = image_latents
        self.noise = noise
        self.keep = (1.0 - mask).astype(np.float32)
        self.repaint = mask.astype(np.float32)

    def __call__(self, step: int, x: np.ndarray) -> np.ndarray:
        if step + 1 < self.sampler.num_steps:
            known = self.sampler.add_noise(self.image_latents, self.noise, step + 1)
        else:
            known = self.image_latents
        return (self.keep * known + self.repaint * x).astype(np.float32, copy=False)
