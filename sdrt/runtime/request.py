"""What the user asks for, checked against the bundle before any engine runs.

Every check raises `UserError` with one line naming the problem and the fix, so the CLI can print it and
exit 2 without having written anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UserError
from ..manifest import ModelInfo


@dataclass
class GenerationRequest:
    """One call of `Pipeline.generate`. Images are PIL images; sizes in pixels."""

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

    @property
    def task(self) -> str:
        if self.mask is not None:
            return "inpaint"
        return "img2img" if self.init_image is not None else "txt2img"

    @property
    def effective_strength(self) -> float:
        if self.strength is not None:
            return self.strength
        return 1.0 if self.task == "inpaint" else 0.8


def resolve_size(request: GenerationRequest, model: ModelInfo) -> tuple[int, int]:
    """(height, width) for the request, validated against the bundle's supported range."""
    height, width = request.height, request.width
    if request.init_image is not None:
        image_w, image_h = request.init_image.size
        height = height or image_h
        width = width or image_w
    default_h, default_w = model.default_size
    height, width = height or default_h, width or default_w
    step = max(model.size_multiple, model.vae_scale_factor)
    for name, value in (("width", width), ("height", height)):
        if value % step:
            lower, upper = value - value % step, value - value % step + step
            raise UserError(f"{name} {value} is not a multiple of {step}: use {lower or upper} or {upper}"
                            + (" (or resize the init image)" if request.init_image is not None else ""))
        if not model.min_size <= value <= model.max_size:
            raise UserError(f"{name} {value} is outside this bundle's range {model.min_size}..{model.max_size}: "
                            f"choose a size in that range or re-export with a wider one")
    return height, width


def validate(request: GenerationRequest) -> None:
    """Checks that need no bundle (the sampler and temperature are checked by the scheduler library)."""
    if not isinstance(request.prompt, str):
        raise UserError("prompt must be text")
    if not isinstance(request.batch, int) or request.batch < 1:
        raise UserError(f"batch must be a whole number >= 1, got {request.batch!r}")
    if not isinstance(request.steps, int) or request.steps < 1:
        raise UserError(f"steps must be a whole number >= 1, got {request.steps!r}")
    if not np.isfinite(request.cfg) or request.cfg < 0:
        raise UserError(f"cfg must be a number >= 0, got {request.cfg}: use e.g. 7")
    if not 0.0 <= request.guidance_rescale <= 1.0:
        raise UserError(f"guidance rescale must be in [0, 1], got {request.guidance_rescale}: use e.g. 0.7")
    if request.mask is not None and request.init_image is None:
        raise UserError("a mask needs the image it applies to: pass --init-image as well")
    if request.strength is not None and request.init_image is None:
        raise UserError("strength applies to img2img and inpainting: pass --init-image, or drop --strength")
    if request.strength is not None and not 0.0 < request.strength <= 1.0:
        raise UserError(f"strength must be in (0, 1], got {request.strength}: use e.g. 0.75")
    if request.mask is not None and request.mask.size != request.init_image.size:
        mw, mh = request.mask.size
        iw, ih = request.init_image.size
        raise UserError(f"the mask is {mw}x{mh} but the init image is {iw}x{ih}: give a mask of the image's size")


def check_latents(latents: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    latents = np.asarray(latents, dtype=np.float32)
    if latents.shape != shape:
        raise UserError(f"initial latents have shape {latents.shape}, this request needs {shape}: "
                        "match the batch, the latent channels and size / 8")
    return latents
