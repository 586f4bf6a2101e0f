"""Pixels in and out: user images to VAE inputs, masks to latent masks, VAE outputs to PNG files.

Conversions follow diffusers' VaeImageProcessor so the same picture gives the same tensors: RGB / 255 then
2x - 1; resizing with Lanczos; masks in grayscale, binarized at 0.5 (white = repaint) and taken at every
8th pixel for the latent grid (torch's nearest-neighbour downsampling by an integer factor); outputs mapped
back with (x / 2 + 0.5) clipped to [0, 1], times 255, rounded.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..manifest import write_atomic


def open_image(path: str | os.PathLike, what: str = "image"):
    """A PIL image, with a one-line error for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist: check the path") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read {what} {path} ({exc}): give a PNG or JPEG file") from None
    return image


def image_to_array(image, width: int, height: int) -> np.ndarray:
    """float32 [1, 3, height, width] in [-1, 1]; resized with Lanczos if its size differs."""
    from PIL import Image

    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return (pixels.transpose(2, 0, 1)[None] * np.float32(2.0) - np.float32(1.0)).astype(np.float32)


def mask_to_array(mask, width: int, height: int) -> np.ndarray:
    """float32 [1, 1, height, width] of 0 (keep) and 1 (repaint)."""
    from PIL import Image

    mask = mask.convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), resample=Image.LANCZOS)
    values = np.asarray(mask, dtype=np.float32) / np.float32(255.0)
    return (values >= 0.5).astype(np.float32)[None, None]


def latent_mask(mask: np.ndarray, scale_factor: int) -> np.ndarray:
    """[B, 1, H, W] pixel mask -> [B, 1, H/f, W/f] by nearest neighbour (index f*i, as torch's interpolate)."""
    return np.ascontiguousarray(mask[:, :, ::scale_factor, ::scale_factor])


def array_to_uint8(decoded: np.ndarray) -> np.ndarray:
    """VAE output [B, 3, H, W] in ~[-1, 1] -> uint8 [B, H, W, 3]."""
    x = np.clip(decoded.astype(np.float32) / np.float32(2.0) + np.float32(0.5), 0.0, 1.0)
    return np.round(x.transpose(0, 2, 3, 1) * np.float32(255.0)).astype(np.uint8)


def png_bytes(pixels: np.ndarray, parameters: str | None = None) -> bytes:
    """PNG of uint8 [H, W, 3] with the generation settings in a `parameters` tEXt chunk (AUTOMATIC1111's key,
    which ComfyUI and most image viewers for SD read as well)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(path: str | os.PathLike, pixels: np.ndarray, parameters: str | None = None) -> Path:
    """Write atomically (temp file + rename): a crash never leaves half a PNG under the final name."""
    path = Path(path)
    write_atomic(path, png_bytes(pixels, parameters))
    return path
