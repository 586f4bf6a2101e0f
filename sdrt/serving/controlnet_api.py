"""ControlNet in the AUTOMATIC1111 API, in the shape of the sd-webui-controlnet extension, which existing
clients send: `alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`, one unit per ControlNet.

Read from a unit: `image` (or the older `input_image`; base64), `module` ("none" or "canny"; the extension's
"None" as well), `model` (the bundle's ControlNet name; A1111's " [hash]" suffix is dropped; empty or "None":
the bundle's only ControlNet), `weight`, `guidance_start`, `guidance_end`, `enabled` (false: the unit is
skipped), and for canny `threshold_a` / `threshold_b` (low / high; -1 or absent: 100 / 200). Its other
fields (resize_mode, control_mode, pixel_perfect, processor_res, low_vram, ...) and other alwayson_scripts
are accepted and named as ignored. Other preprocessors (depth, openpose, ...) are refused: send their map
with module "none".
"""

from __future__ import annotations

import re
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..runtime.control import CANNY_DEFAULTS, ControlSpec, at_size
from .api_errors import invalid
from .image_codec import decode_image
from .limits import check_controls
from .settings import Limits

MODULES = {"none": "none", "None": "none", "canny": "canny"}
ARGS = "alwayson_scripts.controlnet.args"


class ControlNetUnit(BaseModel):
    """One ControlNet unit of the sd-webui-controlnet extension's API."""

    model_config = ConfigDict(extra="allow")

    image: str | None = Field(None, description="Base64 control image (map, or picture for canny).")
    input_image: str | None = Field(None, description="The extension's older name for `image`.")
    module: str = Field("none", description='"none" (the image is the map) or "canny".')
    model: str | None = Field(None, description="The bundle's ControlNet name; default: its only one.")
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    enabled: bool = True
    threshold_a: float = Field(-1, description="canny low threshold; -1: 100.")
    threshold_b: float = Field(-1, description="canny high threshold; -1: 200.")


class ControlNetScript(BaseModel):
    model_config = ConfigDict(extra="allow")

    args: list[ControlNetUnit] = []


class AlwaysOnScripts(BaseModel):
    """A1111's alwayson_scripts: sdrt runs `controlnet`; other scripts are named as ignored."""

    model_config = ConfigDict(extra="allow")

    controlnet: ControlNetScript | None = None


def ignored(scripts: AlwaysOnScripts | None) -> set[str]:
    if scripts is None:
        return set()
    names = {f"alwayson_scripts.{k}" for k in scripts.model_extra or ()}
    if scripts.controlnet is not None:
        names |= {f"alwayson_scripts.controlnet.{k}" for k in scripts.controlnet.model_extra or ()}
        for i, unit in enumerate(scripts.controlnet.args):
            names |= {f"{ARGS}.{i}.{k}" for k in unit.model_extra or ()}
    return names


def _threshold(value: float, default: int) -> float:
    return default if value < 0 else value


def control_specs(scripts: AlwaysOnScripts | None, limits: Limits, size: tuple[int, int]) -> list[ControlSpec]:
    """The request's controls: one per enabled unit (at most --max-controls, counted before any image is
    decoded), its image decoded once and kept at the generation `size` (width, height), not at the upload's:
    every iteration's job shares it. One 422 line per problem."""
    if scripts is None or scripts.controlnet is None:
        return []
    check_controls(limits, ARGS, sum(unit.enabled for unit in scripts.controlnet.args))
    specs = []
    for i, unit in enumerate(scripts.controlnet.args):
        if not unit.enabled:
            continue
        field = f"{ARGS}.{i}"
        text = unit.image if unit.image is not None else unit.input_image
        if text is None:
            raise invalid(f"{field}.image is missing: send the control image base64-encoded", f"{field}.image")
        if unit.module not in MODULES:
            raise invalid(f"{field}.module {unit.module!r} is not one sdrt runs: send the map you computed with "
                          "module \"none\", or use \"canny\"", f"{field}.module")
        model = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", unit.model or "").strip()
        spec = ControlSpec(
            image=decode_image(text, f"{field}.image", limits), scale=unit.weight, start=unit.guidance_start,
            end=unit.guidance_end, controlnet=None if model in ("", "None") else model,
            preprocess=MODULES[unit.module], low_threshold=_threshold(unit.threshold_a, CANNY_DEFAULTS[0]),
            high_threshold=_threshold(unit.threshold_b, CANNY_DEFAULTS[1]))
        try:
            specs.append(at_size(spec, *size))
        except UserError as exc:  # an image mode or levels the runtime cannot read
            raise invalid(str(exc), f"{field}.image") from None
    return specs

