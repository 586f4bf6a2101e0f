"""Classifier-free guidance as diffusers does it, on a UNet batch ordered [negative..., positive...].

Guidance rescale (Lin et al. 2023, section 3.4) is applied to the model's output space (epsilon or v), with
the unbiased standard deviation (ddof=1) over every axis but the batch, as diffusers' `rescale_noise_cfg`.
"""

from __future__ import annotations

import numpy as np


def uses_cfg(scale: float) -> bool:
    """diffusers runs the unconditional branch only for a guidance scale above 1."""
    return scale > 1.0


def apply_cfg(prediction: np.ndarray, scale: float, rescale: float = 0.0) -> np.ndarray:
    """Guided output for a [2B, ...] float32 prediction whose first half is unconditional. Returns a new
    array, the only one allocated: uncond + scale * (cond - uncond) computed in place in it, operation for
    operation (so bit for bit) what the three-temporary expression gives."""
    half = prediction.shape[0] // 2
    uncond, cond = prediction[:half], prediction[half:]
    guided = np.subtract(cond, uncond, dtype=np.float32)
    np.multiply(guided, np.float32(scale), out=guided)
    np.add(guided, uncond, out=guided)  # = uncond + guided: float addition commutes exactly
    if rescale > 0.0:
        guided = rescale_guided(guided, cond, rescale)
    return guided.astype(np.float32, copy=False)


def rescale_guided(guided: np.ndarray, cond: np.ndarray, rescale: float) -> np.ndarray:
    axes = tuple(range(1, guided.ndim))
    std_cond = cond.std(axis=axes, ddof=1, keepdims=True)
    std_guided = guided.std(axis=axes, ddof=1, keepdims=True)
    rescaled = guided * (std_cond / std_guided)
    return np.float32(rescale) * rescaled + np.float32(1.0 - rescale) * guided
