"""Outpainting: the init image on a larger canvas, the new area pre-filled and masked, run as inpainting.

- Margins (left, right, top, bottom) are each rounded up to the size multiple; when the image itself is not
  a multiple, the right (bottom) margin takes the rest, else the left (top) one.
- Fill of the new area: `edge` repeats the border pixels outwards, `blur` does that and blurs it, `noise` is
  random colours (from the request's seed). The fill is what the new area starts from at --strength < 1
  (and what a 4-channel model sees there); at strength 1 (the default) it starts from noise, as inpainting.
- Mask: 1 over the new area, fading to 0 over FEATHER_MULTIPLES size multiples inside the original from
  each extended side. The inpainting path repaints where it is >= 0.5 (9-channel and 4-channel UNets);
  after the last step the latents are blended with the canvas's by the feathered mask (averaged per
  latent pixel), and after decoding the pixels are blended by the same mask with the VAE round trip of the
  original alone (encoder mean, decoder): the original region is exactly the VAE's rendering of the input
  (not touched by the fill or the new area: the VAE's attention sees the whole canvas), with a soft seam.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import UserError
from ..manifest import ModelInfo
from ..schedulers import Sampler
from .images import image_to_array

FILLS = ("edge", "noise", "blur")
FEATHER_MULTIPLES = 2  # the seam's width inside the original, in size multiples (16 px on SD)
Margins = tuple[int, int, int, int]  # left, right, top, bottom


def parse_margins(text: str) -> Margins:
    """`LEFT,RIGHT,TOP,BOTTOM` in pixels (one number: all four sides)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
        if len(values) == 1:
            values *= 4
        if len(values) != 4 or min(values) < 0:
            raise ValueError
    except ValueError:
        raise UserError(f"--outpaint {text!r} is not LEFT,RIGHT,TOP,BOTTOM pixels >= 0: write e.g. "
                        "--outpaint 128,128,0,0") from None
    if not any(values):
        raise UserError("--outpaint 0,0,0,0 extends nothing: give at least one side in pixels, e.g. 0,128,0,0")
    return tuple(values)


def check_request(outpaint: object, fill: object, has_mask: bool, width: object, height: object,
                  has_image: bool) -> None:
    """The checks that need no bundle (called from request.validate)."""
    if not (isinstance(outpaint, tuple) and len(outpaint) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in outpaint)
            and any(outpaint)):
        raise UserError(f"outpaint must be (left, right, top, bottom) pixels >= 0, not all 0, got {outpaint!r}")
    if fill not in FILLS:
        raise UserError(f"unknown outpaint fill {fill!r}: choose one of {', '.join(FILLS)}")
    if not has_image:
        raise UserError("--outpaint extends an image: pass --init-image as well")
    if has_mask:
        raise UserError("--outpaint makes its own mask: drop --mask (or inpaint without --outpaint)")
    if width is not None or height is not None:
        raise UserError("--outpaint sets the size (the image plus the margins): drop --width and --height")


def rounded_margins(image_size: tuple[int, int], margins: Margins, step: int) -> Margins:
    """Each margin up to a multiple of `step`; a side pair that is extended also absorbs the image's own
    remainder, so the canvas is a multiple of `step` whenever it can be."""
    up = [-(-m // step) * step for m in margins]
    for low, high, side in ((0, 1, image_size[0]), (2, 3, image_size[1])):
        rest = -side % step
        if rest and (up[low] or up[high]):
            up[high if up[high] else low] += rest
    return tuple(up)


def outpaint_size(image_size: tuple[int, int], margins: Margins, model: ModelInfo) -> tuple[int, int]:
    """(height, width) of the canvas, or the one-line error when it is outside the bundle's range."""
    step = max(model.size_multiple, model.vae_scale_factor)
    left, right, top, bottom = rounded_margins(image_size, margins, step)
    width, height = image_size[0] + left + right, image_size[1] + top + bottom
    for name, value in (("width", width), ("height", height)):
        if value % step:
            raise UserError(f"the outpainted {name} {value} is not a multiple of {step}: resize the init image "
                            f"({image_size[0]}x{image_size[1]}) to multiples of {step}, or extend that side too")
        if not model.min_size <= value <= model.max_size:
            raise UserError(f"outpainting {image_size[0]}x{image_size[1]} by {left},{right},{top},{bottom} makes "
                            f"{width}x{height}: the {name} {value} is outside this bundle's range "
                            f"{model.min_size}..{model.max_size}; use smaller margins or a smaller image")
    return height, width


def canvas(image, margins: Margins, fill: str, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(canvas [1, 3, H, W] in [-1, 1], feathered mask [1, 1, H, W] in [0, 1]) for rounded margins."""
    left, right, top, bottom = margins
    width, height = image.size
    pixels = image_to_array(image, width, height, "init image")[0].transpose(1, 2, 0)  # [h, w, 3]
    padded = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    new = np.ones(padded.shape[:2], dtype=bool)
    new[top:top + height, left:left + width] = False
    if fill == "blur":
        padded = np.where(new[..., None], _blurred(padded, max(step * 2, min(width, height) // 8)), padded)
    elif fill == "noise":
        rng = np.random.Generator(np.random.PCG64([seed % 2**64, 0x6F757470]))  # apart from the documented streams
        padded = np.where(new[..., None], rng.uniform(-1.0, 1.0, padded.shape).astype(np.float32), padded)
    mask = _feathered(new, margins, step * FEATHER_MULTIPLES)
    return padded.transpose(2, 0, 1)[None].astype(np.float32), mask[None, None]


def _blurred(pixels: np.ndarray, radius: int) -> np.ndarray:
    from PIL import Image, ImageFilter

    levels = np.clip((pixels + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    blurred = Image.fromarray(levels).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(blurred, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def _feathered(new: np.ndarray, margins: Margins, feather: int) -> np.ndarray:
    """1 on the new area; inside the original, 1 - d / feather at distance d (pixels) from an extended side."""
    height, width = new.shape
    left, right, top, bottom = margins
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    distance = np.full(new.shape, np.inf, dtype=np.float32)
    for extended, d in ((left, xs - left), (right, (width - right) - xs), (top, ys - top),
                        (bottom, (height - bottom) - ys)):
        if extended:
            distance = np.minimum(distance, d)
    ramp = np.clip(1.0 - distance / np.float32(feather), 0.0, 1.0)
    return np.where(new, np.float32(1.0), ramp).astype(np.float32)


def latent_keep(mask: np.ndarray, scale_factor: int) -> np.ndarray:
    """The share of each latent pixel to keep from the original: 1 - the mask averaged over its f x f block."""
    b, c, h, w = mask.shape
    blocks = mask.reshape(b, c, h // scale_factor, scale_factor, w // scale_factor, scale_factor)
    return (1.0 - blocks.mean(axis=(3, 5))).astype(np.float32)


class KeepOriginal:
    """End-of-step hook: after the last step, the original's latents where the mask keeps them (softly);
    every other step passes through `inner` (4-channel inpainting's own blend) or unchanged."""

    def __init__(self, sampler: Sampler, image_latents: np.ndarray, keep: np.ndarray,
                 inner: Callable[[int, np.ndarray], np.ndarray] | None) -> None:
        self.sampler, self.image_latents, self.keep, self.inner = sampler, image_latents, keep, inner

    def __call__(self, step: int, x: np.ndarray) -> np.ndarray:
        if self.inner is not None:
            x = self.inner(step, x)
        if step + 1 < self.sampler.num_steps:
            return x
        return (self.keep * self.image_latents + (np.float32(1.0) - self.keep) * x).astype(np.float32)


class Composite:
    """After decoding: decoded x mask + the original's VAE round trip x (1 - mask), in [-1, 1] pixels."""

    def __init__(self, round_trip: np.ndarray, mask: np.ndarray) -> None:
        self.round_trip, self.mask = round_trip, mask

    def __call__(self, decoded: np.ndarray) -> np.ndarray:
        return (decoded * self.mask + self.round_trip * (np.float32(1.0) - self.mask)).astype(np.float32)


def round_trip_canvas(pixels: np.ndarray, margins: Margins, canvas_shape: tuple[int, ...],
                      encode_mean: Callable[[np.ndarray], np.ndarray], decode: Callable[[np.ndarray], np.ndarray],
                      factor: int) -> np.ndarray:
    """The original [1, 3, h, w] encoded alone (edge-padded up to a multiple of `factor`, cropped back) and
    decoded, placed where it sits on the canvas [1, 3, H, W] (zeros elsewhere)."""
    _, _, h, w = pixels.shape
    padded = np.pad(pixels, ((0, 0), (0, 0), (0, -h % factor), (0, -w % factor)), mode="edge")
    decoded = decode(encode_mean(padded))[:, :, :h, :w]
    out = np.zeros(canvas_shape, dtype=np.float32)
    left, _, top, _ = margins
    out[:, :, top:top + h, left:left + w] = decoded
    return out
