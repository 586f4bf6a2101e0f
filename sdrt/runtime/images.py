"""Pixels in and out: user images to VAE inputs, masks to latent masks, VAE outputs to PNG files.

Conversions follow diffusers' VaeImageProcessor so the same picture gives the same tensors: RGB / 255 then
2x - 1; resizing with Lanczos; masks in grayscale, binarized at 0.5 (white = repaint) and taken at every
8th pixel for the latent grid (torch's nearest-neighbour downsampling by an integer factor); outputs mapped
back with (x / 2 + 0.5) clipped to [0, 1], times 255, rounded.

Deeper grayscale images are scaled, not clipped: Pillow's own conversion to L or RGB clips 16-bit and 32-bit
integer values to 0..255 (a 16-bit mask turns almost all white, so inpainting repaints everything) and
truncates float values (a 0..1 float TIFF turns black). So 16-bit (I;16, I;16B, ...) and 32-bit integer (I)
images are read as 0..65535 and float (F) images as 0..1, resized in float, and any other mode is converted by
Pillow or refused with one line.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..manifest import write_atomic
from ..user_files import require_regular_file


def open_image(path: str | os.PathLike, what: str = "image"):
    """A PIL image, with a one-line error for a missing, unreadable or oversized file.

    Pillow's decompression-bomb guard is kept and its warning (above Image.MAX_IMAGE_PIXELS) is an error too:
    a picture that large would be resized down to the bundle's few hundred pixels anyway.
    """
    from PIL import Image, UnidentifiedImageError

    require_regular_file(path, what, "give a PNG or JPEG file", missing_hint="check the path")  # a FIFO would block
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist: check the path") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(_too_large(what, path, str(exc), Image.MAX_IMAGE_PIXELS)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # ValueError: a PNG text chunk past
        # Pillow's 1 MB limit; SyntaxError: some malformed headers
        raise UserError(f"cannot read {what} {path} ({str(exc)[:200]}): give a PNG or JPEG file") from None
    return upright(image)


def upright(image):
    """The image turned as its EXIF orientation tag says, as diffusers' load_image and AUTOMATIC1111 do: a phone
    photo stored sideways with "rotate 90" must be used standing up. An unreadable EXIF block leaves the image as
    stored (A1111 ignores it too)."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):
        return image


def _too_large(what: str, path: str | os.PathLike, pillow_message: str, limit: int | None) -> str:
    """The one line for a decompression bomb. Pillow names the pixel count only in its message."""
    found = re.search(r"\((\d+) pixels\)", pillow_message)
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    limit_text = f"{limit:,}" if limit else "Pillow's limit of"
    return (f"{what} {path} has {size}, more than the {limit_text} pixels Pillow opens safely (its "
            f"decompression-bomb guard): scale it down first")


# Integer grayscale modes read as 16-bit data (0..65535); "I" is Pillow's mode for 16-bit PNGs in older versions.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def deep_gray_levels(image, what: str = "image") -> np.ndarray | None:
    """Levels in [0, 1], float32 [H, W], of a 16-bit, 32-bit integer or float grayscale image; None for the
    8-bit modes that Pillow converts correctly. Values that cannot be such levels are refused."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float32)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UserError(f"the {what} holds integer values from {values.min():.0f} to {values.max():.0f}, "
                            "not 16-bit levels (0..65535): save it as an 8- or 16-bit PNG")
        return values / np.float32(65535.0)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN image has no min: reported as nan
                low, high = np.nanmin(values), np.nanmax(values)
            raise UserError(f"the {what} is a float image with values from {low:g} to {high:g}, not levels in "
                            "0..1: save it as an 8- or 16-bit PNG, or as float levels in 0..1")
        return values
    return None


def converted(image, mode: str, what: str = "image"):
    """`image.convert(mode)` for an 8-bit image, through RGB or LA when Pillow has no direct conversion
    (LAB to L, La to RGB), or a one-line refusal."""
    for route in ((mode,), ("RGB", mode), ("LA", mode)):
        try:
            out = image
            for step in route:
                out = out.convert(step)
            return out
        except ValueError:
            continue
    raise UserError(f"the {what}'s pixel format (Pillow mode {image.mode!r}) cannot be converted to {mode}: "
                    "save it as an 8-bit RGB or grayscale PNG")


def check_image_mode(image, what: str = "image") -> None:
    """Refuse, before any work, an image that image_to_array / mask_to_array could not convert."""
    if deep_gray_levels(image, what) is None:
        converted(image.crop((0, 0, 1, 1)), "RGB", what)  # one pixel tells whether the mode converts


def resized_levels(levels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Float levels resized with Lanczos in Pillow's float mode, clipped to [0, 1] as 8-bit data is."""
    from PIL import Image

    if levels.shape != (height, width):
        levels = np.asarray(Image.fromarray(levels).resize((width, height), resample=Image.LANCZOS))
    return np.clip(levels, 0.0, 1.0).astype(np.float32)


def image_to_array(image, width: int, height: int, what: str = "image") -> np.ndarray:
    """float32 [1, 3, height, width] in [-1, 1]; resized with Lanczos if its size differs."""
    from PIL import Image

    levels = deep_gray_levels(image, what)
    if levels is not None:
        pixels = np.repeat(resized_levels(levels, width, height)[..., None], 3, axis=2)
    else:
        image = converted(image, "RGB", what)
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.LANCZOS)
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return (pixels.transpose(2, 0, 1)[None] * np.float32(2.0) - np.float32(1.0)).astype(np.float32)


def mask_to_array(mask, width: int, height: int) -> np.ndarray:
    """float32 [1, 1, height, width] of 0 (keep) and 1 (repaint)."""
    from PIL import Image

    values = deep_gray_levels(mask, "mask")
    if values is not None:
        values = resized_levels(values, width, height)
    else:
        mask = converted(mask, "L", "mask")
        if mask.size != (width, height):
            mask = mask.resize((width, height), resample=Image.LANCZOS)
        values = np.asarray(mask, dtype=np.float32) / np.float32(255.0)
    return (values >= 0.5).astype(np.float32)[None, None]


def inverted_mask(mask):
    """The mask with black and white swapped (A1111's inpainting_mask_invert), in the levels mask_to_array
    reads: 16-bit and float masks are inverted as 0..1 levels (a float image), not after Pillow's clipping or
    truncating conversion to 8 bits; other modes as 8-bit grey."""
    from PIL import Image, ImageOps

    levels = deep_gray_levels(mask, "mask")
    if levels is not None:
        return Image.fromarray(np.float32(1.0) - levels, mode="F")
    return ImageOps.invert(converted(mask, "L", "mask"))


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
