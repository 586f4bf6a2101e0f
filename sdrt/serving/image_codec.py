"""Images in and out of JSON: base64 (with or without a data-URL prefix) to PIL images, PNGs to base64.

Every way an upload can be wrong (not base64, not an image, a truncated file, too many pixels) becomes one
422 line naming the field; Pillow's own exceptions never reach the client.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np

from ..runtime.images import png_bytes, upright
from .api_errors import invalid
from .limits import check_input_pixels
from .settings import Limits

DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def decode_image(text: str, field: str, limits: Limits):
    """A loaded PIL image from base64 text; A1111 clients often send `data:image/png;base64,...`."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(text, str) or not text.strip():
        raise invalid(f"{field} is empty: send a base64-encoded PNG or JPEG", field)
    payload = DATA_URL.sub("", text.strip(), count=1)
    payload = "".join(payload.split())  # line-wrapped base64 is common
    try:
        data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{field} is not valid base64: send the image file's bytes base64-encoded", field) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_input_pixels(limits, field, *image.size)  # before decoding the pixels
            image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise invalid(f"{field} is not an image sdrt can read: send a base64-encoded PNG or JPEG", field) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise invalid(f"{field} is a damaged image ({exc}): send the whole PNG or JPEG file", field) from None
    return upright(image)  # EXIF orientation applied, as for files on the command line


def png_base64(pixels: np.ndarray, parameters: str) -> str:
    """A PNG carrying the `parameters` chunk, as `sdrt generate` writes it, base64-encoded."""
    return base64.b64encode(png_bytes(pixels, parameters)).decode("ascii")
