"""What the user asks for, checked against the bundle before any engine runs.

Every check raises `UserError` with one line naming the problem and the fix, so the CLI can print it and
exit 2 without having written anything.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..lora.options import LoraOption, check_loras
from ..manifest import MAX_SIDE, ModelInfo
from .control import ControlSpec, check_controls
from .images import check_image_mode
from .outpaint import check_request as check_outpaint
from .request_types import normalise
from .seeds import check_seed_count


@dataclass
class GenerationRequest:
    """One call of `Pipeline.generate`. Images are PIL images; sizes in pixels. Each field's type is checked
    when the request is made (one UserError line; numpy numbers accepted): sdrt.runtime.request_types lists
    the accepted types."""

    prompt: str
    negative: str | None = None  # None: "" (SD1/2) or zeros (SDXL with force_zeros_for_empty_prompt)
    steps: int = 20
    sampler: str = "euler"
    schedule: str = "normal"  # normal | karras | exponential | ays
    spacing: str | None = None  # timestep spacing; None: the bundle's scheduler config, else the sampler's default
    cfg: float = 7.5  # guidance scale; <= 1 runs no unconditional branch
    guidance_rescale: float = 0.0
    temperature: float = 1.0
    temperature_method: str = "tsr"  # tsr | cns
    seed: int = 0  # image i uses seed + i (see sdrt.runtime.noise)
    batch: int = 1
    width: int | None = None  # None: the init image's width, else the bundle's default
    height: int | None = None
    init_image: Any = None  # PIL image: img2img, or inpaint with `mask`
    strength: float | None = None  # None: 0.8 for img2img, 1.0 for inpaint (diffusers' defaults)
    mask: Any = None  # PIL image, white = repaint
    latents: np.ndarray | None = None  # initial standard-normal noise [batch, 4, h/8, w/8] instead of seeded noise
    sampler_options: dict[str, float] = field(default_factory=dict)  # eta, s_noise, ...
    outpaint: tuple[int, int, int, int] | None = None  # (left, right, top, bottom) pixels added
    outpaint_fill: str = "edge"  # edge | noise | blur: the new area before sampling
    prompt_weighting: bool = True  # read A1111's (word:1.2) / [word] / BREAK syntax; False: text taken literally
    clip_skip: int = 1  # A1111 numbering: 1 = the text encoder's last layer, 2 = the penultimate, ...
    controls: list[ControlSpec] = field(default_factory=list)  # ControlNets to apply (sdrt.runtime.control)
    loras: Sequence[LoraOption] = ()  # LoRA adapters applied at run time (sdrt.runtime.lora_sets)

    def __post_init__(self) -> None:
        normalise(self)

    @property
    def task(self) -> str:
        if self.mask is not None or self.outpaint is not None:
            return "inpaint"
        return "img2img" if self.init_image is not None else "txt2img"

    @property
    def effective_strength(self) -> float:
        if self.strength is not None:
            return self.strength
        return 1.0 if self.task == "inpaint" else 0.8


def resolve_size(request: GenerationRequest, model: ModelInfo) -> tuple[int, int]:
    """(height, width) for the request, validated against the bundle's supported range.

    A side not given comes from the init image, else from the bundle's default; only None means "not given"
    (0 is refused, not read as the default).
    """
    step = max(model.size_multiple, model.vae_scale_factor)
    image_size = request.init_image.size if request.init_image is not None else None
    sides = {}
    for name, value, default, index in (("width", request.width, model.default_size[1], 0),
                                        ("height", request.height, model.default_size[0], 1)):
        if value is not None and (not _is_whole(value) or value < 1):
            raise UserError(f"{name} {value!r} is not a size in pixels: choose a multiple of {step} in "
                            f"{model.min_size}..{model.max_size}, or leave --{name} out for {default}")
        from_image = value is None and image_size is not None
        sides[name] = image_size[index] if from_image else (default if value is None else value)
        _check_side(name, sides[name], model, step, from_image, image_size)
    return sides["height"], sides["width"]


def _check_side(name: str, value: int, model: ModelInfo, step: int, from_image: bool,
                image_size: tuple[int, int] | None) -> None:
    if value % step:
        lower, upper = value - value % step, value - value % step + step
        near = [v for v in dict.fromkeys((lower or upper, upper)) if model.min_size <= v <= model.max_size]
        if near:  # only sizes the bundle takes are suggested
            raise UserError(f"{name} {value} is not a multiple of {step}: use {' or '.join(map(str, near))}"
                            + (" (or resize the init image)" if image_size is not None else ""))
    if model.min_size <= value <= model.max_size:
        if value % step:
            raise UserError(f"{name} {value} is not a multiple of {step}: choose a multiple of {step} in "
                            f"{model.min_size}..{model.max_size}")
        return
    if value > MAX_SIDE:
        raise UserError(f"{name} {value} is outside this bundle's range {model.min_size}..{model.max_size} (and "
                        f"past the {MAX_SIDE} pixels sdrt generates at most): choose a multiple of {step} in "
                        f"{model.min_size}..{model.max_size}")
    above = value > model.max_size
    bound = "--max-size" if above else "--min-size"
    export = value - value % step if above else value + (-value) % step  # a multiple of the step, as export needs
    if from_image:
        raise UserError(f"{name} {value} (the init image's, {image_size[0]}x{image_size[1]}) is outside this "
                        f"bundle's range {model.min_size}..{model.max_size}: pass --width and --height to resize "
                        f"the image, or re-export with `sdrt export {bound} {export}`")
    raise UserError(f"{name} {value} is outside this bundle's range {model.min_size}..{model.max_size}: "
                    f"choose a size in that range, or re-export with `sdrt export {bound} {export}`")


def _is_whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_text(name: str, text: str) -> None:
    """Refuse text that is not valid Unicode (lone surrogates): the tokenizer cannot encode it. Python turns
    the invalid UTF-8 bytes of a command-line argument into such surrogates (U+DC80..U+DCFF, one per byte)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        found = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        raise UserError(f"{name} is not valid UTF-8 text (invalid {found} at character {exc.start + 1}): "
                        "type it again, or re-save the text it came from as UTF-8") from None


def validate(request: GenerationRequest) -> None:
    """Checks that need no bundle (the sampler and temperature are checked by the scheduler library)."""
    if not isinstance(request.prompt, str):
        raise UserError("prompt must be text")
    if request.negative is not None and not isinstance(request.negative, str):
        raise UserError("negative prompt must be text")
    check_text("prompt", request.prompt)
    if request.negative is not None:
        check_text("negative prompt", request.negative)
    if not _is_whole(request.batch) or request.batch < 1:
        raise UserError(f"batch must be a whole number >= 1, got {request.batch!r}")
    check_seed_count(request.seed, request.batch)
    if not _is_whole(request.clip_skip) or request.clip_skip < 1:
        raise UserError(f"clip skip must be a whole number >= 1 (1 = the last layer, 2 = the penultimate), "
                        f"got {request.clip_skip!r}")
    check_loras(request.loras)
    if not isinstance(request.prompt_weighting, bool):
        raise UserError(f"prompt weighting must be true or false, got {request.prompt_weighting!r}")
    if not _is_whole(request.steps) or request.steps < 1:
        raise UserError(f"steps must be a whole number >= 1, got {request.steps!r}")
    if not _is_number(request.cfg) or not math.isfinite(request.cfg) or request.cfg < 0:
        raise UserError(f"cfg must be a number >= 0, got {request.cfg}: use e.g. 7")
    if not _is_number(request.guidance_rescale) or not 0.0 <= request.guidance_rescale <= 1.0:
        raise UserError(f"guidance rescale must be in [0, 1], got {request.guidance_rescale}: use e.g. 0.7")
    if not _is_number(request.temperature):
        raise UserError(f"temperature must be a positive number, got {request.temperature!r}: use e.g. 0.8 or 1.2")
    if request.outpaint is not None:
        check_outpaint(request.outpaint, request.outpaint_fill, request.mask is not None, request.width,
                       request.height, request.init_image is not None)
    if request.mask is not None and request.init_image is None:
        raise UserError("a mask needs the image it applies to: pass --init-image as well")
    if request.strength is not None and request.init_image is None:
        raise UserError("strength applies to img2img and inpainting: pass --init-image, or drop --strength")
    if request.strength is not None and (not _is_number(request.strength) or not 0.0 < request.strength <= 1.0):
        raise UserError(f"strength must be in (0, 1], got {request.strength}: use e.g. 0.75")
    if request.mask is not None and request.mask.size != request.init_image.size:
        mw, mh = request.mask.size
        iw, ih = request.init_image.size
        raise UserError(f"the mask is {mw}x{mh} but the init image is {iw}x{ih}: give a mask of the image's size")
    if request.init_image is not None:
        check_image_mode(request.init_image, "init image")
    if request.mask is not None:
        check_image_mode(request.mask, "mask")
    check_controls(request.controls)


def check_latents(latents: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    latents = np.asarray(latents, dtype=np.float32)
    if latents.shape != shape:
        raise UserError(f"initial latents have shape {latents.shape}, this request needs {shape}: "
                        "match the batch, the latent channels and size / 8")
    return latents


# Beyond these a NaN or Inf result is most likely the setting's doing (usual: cfg 1..15, temperature 0.5..2).
EXTREME_CFG = 50.0
EXTREME_TEMPERATURE = (0.05, 20.0)


def nonfinite_error(what: str, request: GenerationRequest, precision: str) -> UserError:
    """The error for NaN/Inf in the sampled latents or the decoded images, naming the likely causes."""
    causes = []
    if request.cfg > EXTREME_CFG:
        causes.append(f"lower --cfg ({request.cfg:g} is extreme; 4 to 12 is usual)")
    if not EXTREME_TEMPERATURE[0] <= request.temperature <= EXTREME_TEMPERATURE[1]:
        causes.append(f"use a --temperature nearer 1 ({request.temperature:g} is extreme)")
    if precision == "fp16":
        causes.append("try --precision fp32 (fp16 overflows more easily)")
    if request.loras:  # an adapter with extreme weights, or at an extreme scale, overflows the UNet
        names = ", ".join(f"{Path(o.path).name}:{o.scale:g}" for o in check_loras(request.loras))
        causes.append(f"lower the LoRA scale or leave the LoRA out ({names}; the adapter may be damaged)")
    if not causes:
        causes.append("try another --sampler or fewer extreme --sampler-option values, and check the bundle "
                      "with --verify")
    return UserError(f"the {what} contain NaN or Inf values, so there is no image: {', or '.join(causes)}")
