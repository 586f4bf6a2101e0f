"""The image sizes a bundle accepts: from `--min-size/--max-size`, else derived from the UNet's sample size.

The graphs are dynamic in height and width, so the range is a promise written to the manifest
(model.min_size / max_size) that the runtime checks requests against and TensorRT profiles are built from.
The derived default (a quarter to twice the UNet's native size) stays what it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from ..manifest import MAX_SIDE


@dataclass(frozen=True)
class SizeRange:
    min_size: int
    max_size: int
    default_size: int
    source: str  # "--min-size/--max-size" or how it was derived


def check_size_options(min_size: int | None, max_size: int | None) -> None:
    """What can be checked before the model is loaded."""
    for flag, value in (("--min-size", min_size), ("--max-size", max_size)):
        if value is not None and value <= 0:
            raise UserError(f"{flag} {value} must be a positive number of pixels, e.g. {flag} 256")
        if value is not None and value > MAX_SIDE:
            raise UserError(f"{flag} {value} is larger than the {MAX_SIDE} pixels a side sdrt generates at most: "
                            f"pass {flag} {MAX_SIDE} or less")
    if min_size is not None and max_size is not None and min_size > max_size:
        raise UserError(f"--min-size {min_size} is larger than --max-size {max_size}: swap them")


def size_range(scale: int, latent: int, downsamplings: int, min_size: int | None, max_size: int | None,
               say: Callable[[str], None] = lambda m: None) -> SizeRange:
    """The bundle's range for a VAE of `scale` pixels per latent, a UNet of native latent side `latent` that
    halves its latents `downsamplings` times; a default outside the range is clamped, with a note."""
    check_size_options(min_size, max_size)
    up_factor = 2 ** downsamplings
    derived_min, derived_max = scale * max(up_factor, latent // 4), scale * latent * 2
    smallest = scale * up_factor
    for flag, value in (("--min-size", min_size), ("--max-size", max_size)):
        if value is None:
            continue
        if value < smallest:
            raise UserError(f"{flag} {value} is below this model's smallest size {smallest} (its UNet downsamples "
                            f"the latents by {up_factor}): use {smallest} or more")
        if value % scale:
            lower, upper = value // scale * scale, (value // scale + 1) * scale
            raise UserError(f"{flag} {value} is not a multiple of this model's VAE scale factor {scale}: "
                            f"use {lower} or {upper}")
    low = derived_min if min_size is None else min_size
    high = derived_max if max_size is None else max_size
    if low > high:
        given, derived = ("--min-size", "maximum") if min_size is not None else ("--max-size", "minimum")
        raise UserError(f"{given} {min_size if min_size is not None else max_size} leaves no sizes with the "
                        f"derived {derived} {high if min_size is not None else low}: pass "
                        f"{'--max-size' if min_size is not None else '--min-size'} too")
    native = scale * latent
    default = min(max(native, low), high)
    if default != native:
        say(f"note: the UNet's native size {native} is outside {low}..{high}: the bundle's default size is {default}")
    source = "derived from the UNet's sample_size" if min_size is None and max_size is None \
        else "--min-size/--max-size"
    return SizeRange(low, high, default, source)
