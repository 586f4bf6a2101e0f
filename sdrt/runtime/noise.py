"""Reproducible noise for a batch: one numpy generator per image, seeded with that image's seed.

The documented generator: image i of a batch draws all of its noise from
`numpy.random.Generator(numpy.random.PCG64(seed_i))` with `standard_normal(shape, dtype=float32)`, in this
order: the initial latent noise, then the VAE-encoder sample noise (img2img/inpaint: the init image, then
the masked image for 9-channel inpaint UNets; a 9-channel inpaint at strength 1 starts from pure noise and
encodes only the masked image), then every noise the sampler injects, step by step.
Because each image owns its stream, image i of a batch with seeds [s, s+1, ...] is the same picture as a
batch of one with seed s+i, and a picture can be re-made from the seed in its PNG parameters.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class SeededNoise:
    """Standard-normal float32 noise, `noise(shape)` with shape[0] == number of seeds (one row per image)."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self._rngs = [np.random.Generator(np.random.PCG64(s)) for s in self.seeds]

    def __call__(self, shape: tuple) -> np.ndarray:
        shape = tuple(int(d) for d in shape)
        if shape[0] != len(self._rngs):
            raise ValueError(f"noise for a batch of {shape[0]} asked from {len(self._rngs)} seeds")
        out = np.empty(shape, dtype=np.float32)
        for row, rng in zip(out, self._rngs):
            row[...] = rng.standard_normal(shape[1:], dtype=np.float32)
        return out


def batch_seeds(seed: int, batch: int) -> list[int]:
    """Seeds of a batch: seed, seed + 1, ... (what AUTOMATIC1111 does, so a seed in a PNG re-makes it)."""
    return [seed + i for i in range(batch)]
