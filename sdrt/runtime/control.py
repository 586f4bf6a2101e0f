"""ControlNet at run time: control images in, summed residuals out, per UNet call, as diffusers'
StableDiffusion(XL)ControlNetPipeline does it (guess mode off):

- the control image is converted to RGB and resized to the output size with Lanczos, as diffusers'
  control image processor (VaeImageProcessor, no normalisation): levels in [0, 1], one row per UNet row;
- each ControlNet gets the UNet's own inputs (scaled latents, timestep, text conditioning; with CFG both
  halves) and returns its unscaled residuals; residual * scale is summed over the ControlNets in the
  order given (diffusers' MultiControlNetModel);
- windows: ControlNet k acts at step i of N when not (i / N < start or (i + 1) / N > end) (diffusers'
  `controlnet_keep`); outside its window its scale is 0, so it is not run at all (0 * r adds nothing);
- `preprocess="canny"`: OpenCV's Canny on the resized RGB image (A1111's default thresholds 100 / 200),
  the single-channel edge map repeated to RGB, as the AUTOMATIC1111 ControlNet extension does.

Depth, pose and other maps are supplied by the user, already computed.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ..backends.engine import Engine, run_rows
from ..errors import UserError
from .images import check_image_mode, converted, deep_gray_levels, resized_levels

PREPROCESSORS = ("none", "canny")
CANNY_DEFAULTS = (100, 200)  # AUTOMATIC1111 ControlNet extension's canny low / high thresholds
RESIDUAL_PREFIXES = ("down_block_res_", "mid_block_res")
ASPECT_TOLERANCE = 0.01  # relative aspect-ratio difference below which no note is given


@dataclass
class ControlSpec:
    """One ControlNet applied to a request: `image` a PIL image (the map, or the picture to run Canny on)."""

    image: Any
    scale: float = 1.0
    start: float = 0.0  # fraction of the steps before which this ControlNet is off
    end: float = 1.0  # fraction of the steps after which it is off
    controlnet: str | None = None  # the bundle's ControlNet name; None: the bundle's only one
    preprocess: str = "none"  # none | canny
    low_threshold: int = CANNY_DEFAULTS[0]
    high_threshold: int = CANNY_DEFAULTS[1]
    source_size: tuple[int, int] | None = None  # (width, height) as given, when `image` is resized already (at_size)


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_controls(controls: Sequence[ControlSpec]) -> None:
    """Checks that need no bundle; one line each."""
    if not isinstance(controls, (list, tuple)):
        raise UserError("controls must be a list of ControlSpec")
    for i, spec in enumerate(controls, 1):
        what = f"control {i}" if len(controls) > 1 else "control"
        if spec.image is None:
            raise UserError(f"{what} has no image: pass --control-image FILE")
        check_image_mode(spec.image, f"{what} image")
        if not _number(spec.scale) or not math.isfinite(spec.scale):
            raise UserError(f"{what} scale must be a finite number, got {spec.scale!r}: use e.g. 1.0")
        for name, value in (("start", spec.start), ("end", spec.end)):
            if not _number(value) or not 0.0 <= value <= 1.0:
                raise UserError(f"{what} {name} must be a fraction of the steps in [0, 1], got {value!r}")
        if spec.start > spec.end:
            raise UserError(f"{what} start {spec.start} is after its end {spec.end}: give start <= end "
                            "(e.g. --control-start 0.0 --control-end 1.0)")
        if spec.preprocess not in PREPROCESSORS:
            raise UserError(f"unknown control preprocess {spec.preprocess!r}: choose {' or '.join(PREPROCESSORS)}")
        for name, value in (("low", spec.low_threshold), ("high", spec.high_threshold)):
            if not _number(value) or not 0 <= value <= 255:
                raise UserError(f"{what} canny {name} threshold must be in 0..255, got {value!r}")


def canny(image: Any, low: float = CANNY_DEFAULTS[0], high: float = CANNY_DEFAULTS[1]) -> Any:
    """OpenCV's Canny edges of an RGB image, as an RGB PIL image (the edge map in all three channels)."""
    from PIL import Image

    try:
        import cv2
    except ImportError:
        raise UserError("--control-preprocess canny needs OpenCV: pip install 'sdrt[controlnet]' "
                        "(opencv-python-headless), or pass an edge map with --control-preprocess none") from None
    edges = cv2.Canny(np.asarray(converted(image, "RGB", "control image")), low, high)
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2))


def control_pixels(spec: ControlSpec, width: int, height: int) -> np.ndarray:
    """float32 [1, 3, height, width] in [0, 1]: the ControlNet's conditioning image. 16-bit and float
    grayscale maps (depth) keep their levels (images.deep_gray_levels) instead of Pillow's clipping."""
    from PIL import Image

    levels = deep_gray_levels(spec.image, "control image")
    if levels is not None:
        gray = resized_levels(levels, width, height)
        if spec.preprocess != "canny":
            return np.ascontiguousarray(np.repeat(gray[None, None], 3, axis=1))
        image = Image.fromarray(np.round(gray * 255).astype(np.uint8)).convert("RGB")
    else:
        image = converted(spec.image, "RGB", "control image")
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.LANCZOS)
    if spec.preprocess == "canny":
        image = canny(image, spec.low_threshold, spec.high_threshold)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def at_size(spec: ControlSpec, width: int, height: int) -> ControlSpec:
    """The spec with its image converted and resized to the output size now, as control_pixels would (8-bit
    images as RGB with Lanczos; 16-bit and float maps as float levels), so that the server keeps one small
    image per control however large the upload and however many jobs share it; control_pixels then only
    reads it (the same values). The size given is kept for the aspect-ratio note."""
    from PIL import Image

    levels = deep_gray_levels(spec.image, "control image")
    if levels is not None:
        image = Image.fromarray(resized_levels(levels, width, height), mode="F")
    else:
        image = converted(spec.image, "RGB", "control image")
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.LANCZOS)
    return replace(spec, image=image, source_size=spec.source_size or tuple(spec.image.size))


def aspect_notes(controls: Sequence[ControlSpec], width: int, height: int) -> list[str]:
    """One note per control image whose aspect ratio is not the output's (it gets stretched)."""
    notes = []
    for i, spec in enumerate(controls, 1):
        w, h = spec.source_size or spec.image.size
        if abs((w / h) / (width / height) - 1.0) > ASPECT_TOLERANCE:
            what = f"control image {i}" if len(controls) > 1 else "the control image"
            notes.append(f"{what} is {w}x{h} but the output is {width}x{height}: it is stretched to fit; crop it "
                         "to the output's aspect ratio to avoid distortion")
    return notes


def is_residual(name: str) -> bool:
    return name.startswith(RESIDUAL_PREFIXES)


def residual_shape(spec_shape: Sequence[int | str], rows: int, height: int, width: int) -> tuple[int, ...]:
    """The shape of a residual input for `rows` rows at latent size height x width, from its named dims
    (`height`, `height_divF`: the latent height over F, rounded up)."""
    def side(dim: int | str, size: int) -> int:
        if isinstance(dim, int):
            return dim
        factor = int(dim.rpartition("_div")[2]) if "_div" in dim else 1
        return -(-size // factor)

    return (rows, int(spec_shape[1]), side(spec_shape[2], height), side(spec_shape[3], width))


@dataclass
class ActiveControl:
    """One ControlNet of a prepared generation: its engine, its conditioning rows and its schedule."""

    engine: Engine
    image_rows: np.ndarray  # [rows, 3, H, W], read-only
    scale: float
    start: float
    end: float

    def weight(self, step: int, total: int) -> float:
        """This step's scale (diffusers' conditioning_scale * controlnet_keep[i])."""
        keep = 1.0 - float(step / total < self.start or (step + 1) / total > self.end)
        return self.scale * keep


class Controls:
    """The ControlNets of one generation; `residuals` gives its rows of the UNet's residual inputs."""

    def __init__(self, active: list[ActiveControl]) -> None:
        self.active = active

    @property
    def key(self) -> tuple:
        """Identifies this set of controls (the batching loop stacks only generations with equal keys)."""
        return tuple(id(a) for a in self.active)

    def residuals(self, sample: np.ndarray, timesteps: np.ndarray, cond: Mapping[str, np.ndarray],
                  step: int, total: int) -> dict[str, np.ndarray] | None:
        """Summed, scaled residuals for these UNet rows, or None when no ControlNet acts at this step."""
        summed: dict[str, np.ndarray] | None = None
        for control in self.active:
            weight = control.weight(step, total)
            if weight == 0.0:
                continue
            channels = control.engine.inputs["sample"].shape[1]
            feeds = {"sample": np.ascontiguousarray(sample[:, :channels]) if sample.shape[1] != channels else sample,
                     "timestep": timesteps, "controlnet_cond": control.image_rows,
                     **{k: v for k, v in cond.items() if k in control.engine.inputs}}
            out = run_rows(control.engine, feeds)  # padded up to a TensorRT profile's smallest batch
            scaled = {name: value * np.float32(weight) for name, value in out.items()}
            summed = scaled if summed is None else {n: summed[n] + scaled[n] for n in summed}
        return summed
