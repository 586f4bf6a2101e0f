"""The types `GenerationRequest` accepts, checked when one is made, so a library caller gets one `UserError`
line naming the field instead of a TypeError deep in the sampler (or, worse, a wrong answer such as a seed 1.5
printed as "Seed: 1.5"). numpy integers and floats count as numbers: a value from an array is a fine seed.

Accepted (docs/runtime.md lists the same):
- prompt: str; negative, spacing: str or None; sampler, schedule, temperature_method, outpaint_fill: str
- steps, batch, clip_skip: whole numbers (int or numpy integer, not bool); seed: a whole number in
  0..2**64-1 (sdrt.runtime.seeds; -1 is the CLI's "random", resolved before a request is made)
- width, height: whole numbers or None
- cfg, guidance_rescale, temperature: real numbers (not bool); strength: a real number or None
- init_image, mask: PIL images of at least 1x1 pixels, or None (open files with sdrt.runtime.open_image)
- latents: a numpy array or None; sampler_options: a dict of option name -> real number
- outpaint: four whole numbers (left, right, top, bottom) or None; prompt_weighting: bool
- controls: a list of ControlSpec; loras: a list of LoraOption
Value ranges (steps >= 1, strength in (0, 1], ...) are checked by `request.validate`, and sizes against the
bundle when the request runs.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..errors import UserError
from .seeds import MAX_SEED

TEXT = ("prompt", "sampler", "schedule", "temperature_method", "outpaint_fill")
OPTIONAL_TEXT = ("negative", "spacing")
WHOLE = ("steps", "batch", "clip_skip")
OPTIONAL_WHOLE = ("width", "height")
REAL = ("cfg", "guidance_rescale", "temperature")
OPTIONAL_REAL = ("strength",)
IMAGES = ("init_image", "mask")


def is_whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _refuse(name: str, kind: str, value: object) -> UserError:
    shown = f"{type(value).__name__} {value!r}" if len(repr(value)) <= 40 else f"a {type(value).__name__}"
    return UserError(f"GenerationRequest {name} must be {kind}, got {shown}")


def normalise(request: Any) -> None:
    """Check every field's type and turn numpy numbers into Python ones (in place); one line on the first
    field that does not fit."""
    from PIL import Image

    for name in TEXT + OPTIONAL_TEXT:
        value = getattr(request, name)
        if not isinstance(value, str) and not (value is None and name in OPTIONAL_TEXT):
            raise _refuse(name, "text" + (" or None" if name in OPTIONAL_TEXT else ""), value)
    for name in WHOLE + OPTIONAL_WHOLE + ("seed",):
        value = getattr(request, name)
        if value is None and name in OPTIONAL_WHOLE:
            continue
        if not is_whole(value):
            raise _refuse(name, "a whole number" + (" or None" if name in OPTIONAL_WHOLE else ""), value)
        setattr(request, name, int(value))
    if not 0 <= request.seed <= MAX_SEED:
        raise UserError(f"GenerationRequest seed {request.seed} is out of range: use 0..{MAX_SEED} "
                        "(sdrt.runtime.seeds.resolve_seed turns -1 into a random seed)")
    for name in REAL + OPTIONAL_REAL:
        value = getattr(request, name)
        if value is None and name in OPTIONAL_REAL:
            continue
        if not is_real(value):
            raise _refuse(name, "a number" + (" or None" if name in OPTIONAL_REAL else ""), value)
        setattr(request, name, float(value) if isinstance(value, np.floating) else value)
    for name in IMAGES:
        value = getattr(request, name)
        if value is None:
            continue
        if not isinstance(value, Image.Image):
            raise _refuse(name, "a PIL image or None (open a file with sdrt.runtime.open_image)", value)
        if value.width < 1 or value.height < 1:
            raise UserError(f"GenerationRequest {name} is {value.width}x{value.height} pixels: give an image of at "
                            "least 1x1")
    if request.latents is not None and not isinstance(request.latents, np.ndarray):
        raise _refuse("latents", "a numpy array or None", request.latents)
    _check_options(request)
    if request.outpaint is not None:
        margins = request.outpaint
        if not isinstance(margins, (tuple, list)) or len(margins) != 4 or not all(is_whole(m) for m in margins):
            raise _refuse("outpaint", "four whole numbers (left, right, top, bottom) or None", margins)
        request.outpaint = tuple(int(m) for m in margins)
    if not isinstance(request.prompt_weighting, bool):
        raise _refuse("prompt_weighting", "True or False", request.prompt_weighting)


def _check_options(request: Any) -> None:
    options = request.sampler_options
    if not isinstance(options, dict):
        raise _refuse("sampler_options", 'a dict of option name -> number, e.g. {"eta": 0.5}', options)
    for key, value in options.items():
        if not isinstance(key, str) or not is_real(value):
            raise UserError(f"GenerationRequest sampler_options must map option names to numbers, got "
                            f"{key!r}: {value!r}")
    request.sampler_options = {k: float(v) if isinstance(v, np.floating) else v for k, v in options.items()}
