"""Fixed, seeded inputs for one component at one image size: what the bf16 gate and auto's CPU measurement
feed an engine. Axis meanings come from the same table TensorRT profiles are built from
(sdrt.engines.profiles.AXIS_ROLES), so a batch, latent or sequence axis is sized as a real request sizes it.

Values: standard normal floats (seed 0), timestep 500, token ids 0..9 repeated (valid in any CLIP
vocabulary), so the numbers are the same on every machine and every run.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..engines.profiles import AXIS_ROLES, input_roles
from ..manifest import BundleError, ComponentSpec, ModelInfo


def role_sizes(model: ModelInfo, height: int, width: int, batch: int = 2) -> dict[str, int]:
    """Size of each request axis at height x width pixels; `batch` is the UNet's (2 for one image under CFG)."""
    scale = model.vae_scale_factor
    return {"text_batch": batch, "unet_batch": batch, "image_batch": 1, "text_seq": model.text_max_length,
            "text_len": model.text_max_length, "latent_height": height // scale, "latent_width": width // scale,
            "height": height, "width": width}


def _size(sizes: Mapping[str, int], role: str) -> int:
    """A role's size; `latent_height_div4` and the like are a latent side over F, rounded up."""
    if "_div" in role:
        side, factor = role.rsplit("_div", 1)
        return -(-sizes[side] // int(factor))
    return sizes[role]


def component_feeds(component: str, spec: ComponentSpec, model: ModelInfo, height: int, width: int,
                    batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Input name -> array for `component` at height x width; fixed dims keep the manifest's numbers."""
    if component not in AXIS_ROLES:
        raise BundleError(f"component {component} has no known input layout: re-export with this sdrt version")
    sizes = role_sizes(model, height, width, batch)
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in spec.inputs:
        roles = input_roles(component, tensor) or ()
        shape = tuple(dim if isinstance(dim, int) else _size(sizes, roles[axis])
                      for axis, dim in enumerate(tensor.shape))
        dtype = np.dtype(tensor.dtype)
        if tensor.name.startswith(("down_block_res_", "mid_block_res")):
            feeds[tensor.name] = np.zeros(shape, dtype=dtype)  # a ControlNet bundle's U-Net without a control
        elif np.issubdtype(dtype, np.integer):
            feeds[tensor.name] = (np.arange(int(np.prod(shape))) % 10).reshape(shape).astype(dtype)
        elif tensor.name == "timestep":
            feeds[tensor.name] = np.full(shape, 500, dtype=dtype)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def relative_error(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(worst max|a - e| / max|e|, worst cosine) over the outputs: the export gate's metrics."""
    worst_rel, worst_cos = 0.0, 1.0
    for name, e in expected.items():
        a = np.asarray(actual[name], dtype=np.float64).ravel()
        e = np.asarray(e, dtype=np.float64).ravel()
        if not np.isfinite(a).all():
            return float("inf"), 0.0
        scale = float(np.abs(e).max()) or 1.0
        worst_rel = max(worst_rel, float(np.abs(a - e).max()) / scale)
        norms = float(np.linalg.norm(a) * np.linalg.norm(e))
        worst_cos = min(worst_cos, float(a @ e) / norms if norms else 1.0)
    return worst_rel, worst_cos
