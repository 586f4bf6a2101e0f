"""What one generation puts into a UNet call and takes out of it: its CFG rows, and guidance on its output
rows; plus inpainting's latent blend.

Kept apart from the pipeline so the work done once per step is short and can be timed and benchmarked on
its own (bench/host_overhead.py drives `GuidedUNet` with a UNet stub). `Generation` (generation.py) uses
the same `fill_rows` and `guide`, alone or stacked with other generations' rows.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..schedulers import Sampler
from ..backends.engine import Engine, engine_lock
from .guidance import apply_cfg, uses_cfg
from .text import Conditioning

Progress = Callable[[int, int], None]  # (steps done, steps total)
NoiseSource = Callable[[tuple], np.ndarray]
StepEnd = Callable[[int, np.ndarray], np.ndarray]


def fill_rows(sample: np.ndarray, x: np.ndarray, copies: int, extra_rows: np.ndarray | None) -> None:
    """Write one generation's UNet rows into `sample` [copies * batch, C, h, w]: the latents once per CFG
    copy (negative rows first), then the extra channels (9-channel inpainting), already repeated per copy."""
    latent_channels, b = x.shape[1], x.shape[0]
    for k in range(copies):
        sample[k * b:(k + 1) * b, :latent_channels] = x
    if extra_rows is not None:
        sample[:, latent_channels:] = extra_rows


def guide(out: np.ndarray, scale: float, rescale: float) -> np.ndarray:
    """The model output the sampler gets for one generation's rows: always a new array (samplers keep it),
    so `out` may be the engine's own output buffer, read once here (held under the engine's lock)."""
    if uses_cfg(scale):
        return apply_cfg(np.asarray(out, dtype=np.float32), scale, rescale)
    return np.array(out, dtype=np.float32, copy=True)


class GuidedUNet:
    """model(x, t) for a sampler loop driven by hand: fills its own input buffer, runs the UNet, applies CFG.

    The returned array is always new (never the engine's buffer), since multistep samplers keep past outputs.
    One per generation: its input buffers are its own, so generations on many threads do not share them.
    """

    def __init__(self, engine: Engine, cond: Conditioning, batch: int, scale: float, rescale: float,
                 extra_channels: np.ndarray | None) -> None:
        self.engine = engine
        self.scale = scale
        self.rescale = rescale
        self.copies = 2 if uses_cfg(scale) else 1
        self.extra = None if extra_channels is None else np.concatenate([extra_channels] * self.copies)
        self.sample: np.ndarray | None = None
        self.timestep = np.zeros(batch * self.copies, dtype=np.float32)
        self.cond = cond.feeds()
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, x: np.ndarray, timestep: float) -> np.ndarray:
        if self.sample is None:
            channels = x.shape[1] + (0 if self.extra is None else self.extra.shape[1])
            self.sample = np.empty((x.shape[0] * self.copies, channels, *x.shape[2:]), dtype=np.float32)
        fill_rows(self.sample, x, self.copies, self.extra)
        self.timestep.fill(timestep)
        with engine_lock(self.engine):  # guidance reads the engine's output buffer directly: no copy first
            t0 = time.perf_counter()
            out = self.engine.run({"sample": self.sample, "timestep": self.timestep, **self.cond})["out_sample"]
            self.seconds += time.perf_counter() - t0
            guided = guide(out, self.scale, self.rescale)
        self.calls += 1
        return guided


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
