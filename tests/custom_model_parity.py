"""Shared by the --vae / --embedding / single-file tests: images from an sdrt bundle and from a diffusers
pipeline changed the same way (VAE swapped, embeddings loaded), on the same latents and prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import runtime_reference
from sdrt.runtime import GenerationRequest, Pipeline

PIXEL_TOL = 2 / 255
STEPS = 4


def latents_for(bundle: Path, seed: int) -> np.ndarray:
    model = Pipeline.load(str(bundle)).model
    side = 64 // model.vae_scale_factor
    return np.random.default_rng(seed).standard_normal((1, model.latent_channels, side, side), dtype=np.float32)


def sdrt_images(bundle: Path, prompt: str, negative: str | None, latents: np.ndarray, cfg: float = 7.0) -> np.ndarray:
    """float32 [1, H, W, 3] in [0, 1] from the bundle (euler, STEPS steps)."""
    result = Pipeline.load(str(bundle)).generate(GenerationRequest(prompt, negative=negative, steps=STEPS,
                                                                   sampler="euler", cfg=cfg, latents=latents))
    return np.stack(result.images).astype(np.float32) / 255.0


def diffusers_images(pipe: Any, label: str, kind: str, prompt: str, negative: str | None, latents: np.ndarray,
                     cfg: float = 7.0) -> np.ndarray:
    """The same run through a diffusers pipeline object (kept apart from runtime_reference's cached
    pipelines under its own label, so loading embeddings into it changes no other test's reference)."""
    key = (f"{label} (changed)", "txt2img")
    if key not in runtime_reference._PIPES:
        pipe.set_progress_bar_config(disable=True)
        pipe.original_scheduler_config = dict(pipe.scheduler.config)
        runtime_reference._PIPES[key] = pipe
    images, _ = runtime_reference.run_diffusers(key[0], kind, "txt2img", "euler", prompt=prompt, negative=negative,
                                                steps=STEPS, latents=latents, cfg=cfg)
    return images


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())
