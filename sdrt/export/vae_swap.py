"""`--vae FILE`: replace the checkpoint's VAE weights with a separate VAE file before export.

Users swap VAEs (e.g. SD 1.x's ft-MSE VAE, SDXL's fp16-fix VAE) as .safetensors files in either the
original LDM layout (encoder.down.0.block.0..., as AUTOMATIC1111 and ComfyUI keep them) or the diffusers
layout (encoder.down_blocks.0.resnets.0...). The architecture config stays the checkpoint's; only weights
change, and every weight must be present with the model VAE's shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from ..manifest import sha256_file
from .checkpoint_file import load_tensors, read_shapes

_LDM_PREFIXES = ("first_stage_model.", "vae.")


def vae_layout(path: Path) -> str:
    """"ldm" or "diffusers", from the header alone; refuses pickles and files that are not a VAE."""
    shapes = read_shapes(path, "VAE")
    keys = [k.removeprefix(p) for k in shapes for p in _LDM_PREFIXES if k.startswith(p)] or list(shapes)
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return "diffusers"
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return "ldm"
    raise UserError(f"VAE {path.name} has no VAE encoder/decoder weights (encoder.down* / decoder.up*): pass a "
                    "Stable Diffusion VAE .safetensors file")


def swap_vae(vae: Any, path: Path, family: str) -> dict[str, Any]:
    """Load the VAE weights of `path` into `vae` (an AutoencoderKL); return facts for the manifest."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    layout = vae_layout(path)
    tensors = load_tensors(path, "VAE")
    if layout == "ldm":
        converted = convert_ldm_vae_checkpoint(tensors, dict(vae.config))
    else:
        converted = {k.removeprefix("vae."): v for k, v in tensors.items()}
    own = vae.state_dict()
    for key, expected in own.items():
        got = converted.get(key)
        if got is None:
            raise UserError(f"VAE {path.name} lacks {key} ({layout} layout; incomplete, or not an AutoencoderKL "
                            f"VAE): pass a VAE made for {family}")
        if tuple(got.shape) != tuple(expected.shape):
            raise UserError(f"VAE {path.name} does not fit this {family} model ({key} is {list(got.shape)}, the "
                            f"model's VAE has {list(expected.shape)}): pass a VAE made for {family}")
    vae.load_state_dict({k: converted[k].float() for k in own}, strict=True)
    vae.float().eval().requires_grad_(False)
    return {"file": str(path), "sha256": sha256_file(path), "layout": layout, "tensors": len(own)}
