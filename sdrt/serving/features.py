"""Clip skip and outpainting over HTTP, checked in the request's own field names before a job is queued.

The runtime refuses the same things, but its messages name CLI options (`--clip-skip`, `--init-image`); a
client needs the JSON field at fault. Prompt weighting needs nothing here: every shape passes the prompt to
the runtime, which reads A1111's `(word:1.2)` syntax unless `prompt_weighting` is false.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field

from ..runtime.outpaint import rounded_margins
from .api_errors import invalid
from .limits import check_pixels, shown_in_schema
from .model_info import ServedModel
from .settings import Limits

CLIP_SKIP_HELP = ("A1111 numbering: 1 = the text encoder's last layer, 2 = the penultimate, ... up to the deepest "
                  "this bundle exported (`maximum`).")


def clip_skip_field(model: ServedModel, default: int | None, note: str = "") -> Any:
    """The clip-skip field of this server's request models: the bundle's deepest clip skip in the schema."""
    return Field(default, ge=1, description=note + CLIP_SKIP_HELP,
                 json_schema_extra=shown_in_schema(maximum=model.max_clip_skip))


def check_clip_skip(model: ServedModel, field: str, clip_skip: int) -> None:
    if clip_skip <= model.max_clip_skip:
        return
    if model.max_clip_skip == 1:
        raise invalid(f"{field} {clip_skip} needs the hidden states of earlier text-encoder layers, which this "
                      "bundle lacks (exported by an older sdrt): use 1, or re-export the model with `sdrt export`",
                      field)
    raise invalid(f"{field} {clip_skip} is deeper than the text-encoder layers this bundle exported: choose 1 to "
                  f"{model.max_clip_skip}", field)


def check_outpaint(limits: Limits, model: ServedModel, margins: Sequence[int], image: Any, has_mask: bool,
                   size_field: str | None) -> None:
    """`outpaint` with what it needs (an init image) and without what it sets itself (mask, size); the canvas
    within this server's pixel limit. The bundle's size range is the runtime's check (its message names no
    option, and `submit` gives it the field)."""
    if not any(margins):
        raise invalid(f"outpaint {list(margins)} extends nothing: give at least one side in pixels, e.g. "
                      "[0, 128, 0, 0]", "outpaint")
    if image is None:
        raise invalid("outpaint extends an image: send init_image as well", "outpaint")
    if has_mask:
        raise invalid("outpaint makes its own mask: drop mask (or inpaint without outpaint)", "outpaint")
    if size_field is not None:
        raise invalid(f"outpaint sets the size (the init image plus the margins): drop {size_field}", "outpaint")
    left, right, top, bottom = rounded_margins(image.size, margins, model.size_multiple)
    check_pixels(limits, "outpaint", image.size[0] + left + right, image.size[1] + top + bottom)


# Refusals of the runtime's outpainting that name no field, by how they begin: `submit` gives them one.
OUTPAINT_REFUSALS = {"outpainting": "outpaint", "the outpainted": "outpaint"}
