"""`sdrt generate`'s ControlNet options: repeatable, paired with the --control-image they follow by position.

Each per-control option may be given not at all (its default), once (for every control image) or once per
--control-image, in the same order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import click

from ..errors import UserError

CONTROL_OPTIONS = ("control_images", "control_scales", "control_starts", "control_ends", "control_preprocess",
                   "controlnets", "canny_low", "canny_high")


def control_options(command: Callable) -> Callable:
    options = [
        click.option("--control-image", "control_images", multiple=True, type=click.Path(path_type=Path),
                     help="A ControlNet conditioning image (edge, depth, pose map...; repeatable, one per ControlNet)."),
        click.option("--control-scale", "control_scales", multiple=True, type=float,
                     help="ControlNet strength (default 1.0): once for all control images or once per image."),
        click.option("--control-start", "control_starts", multiple=True, type=float,
                     help="Fraction of the steps before which the ControlNet is off (default 0.0)."),
        click.option("--control-end", "control_ends", multiple=True, type=float,
                     help="Fraction of the steps after which the ControlNet is off (default 1.0)."),
        click.option("--control-preprocess", "control_preprocess", multiple=True,
                     type=click.Choice(["none", "canny"]),
                     help="none: the image is the map; canny: OpenCV Canny edges of it (needs sdrt[controlnet])."),
        click.option("--controlnet", "controlnets", multiple=True, metavar="NAME",
                     help="Which of the bundle's ControlNets (default: its only one); once per control image."),
        click.option("--canny-low", "canny_low", default=100, show_default=True, type=int,
                     help="Canny low threshold (A1111's default)."),
        click.option("--canny-high", "canny_high", default=200, show_default=True, type=int,
                     help="Canny high threshold (A1111's default)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _per_image(values: Sequence[Any], flag: str, count: int, default: Any) -> list[Any]:
    if values and not count:
        raise UserError(f"{flag} applies to a control image: pass --control-image FILE as well")
    if len(values) not in (0, 1, count):
        raise UserError(f"{flag} is given {len(values)} times for {count} control images: give it once (for all) "
                        "or once per --control-image, in the same order")
    if not values:
        return [default] * count
    return list(values) * count if len(values) == 1 else list(values)


def control_specs(control_images: Sequence[Path], control_scales: Sequence[float], control_starts: Sequence[float],
                  control_ends: Sequence[float], control_preprocess: Sequence[str], controlnets: Sequence[str],
                  canny_low: int, canny_high: int) -> list:
    """The request's ControlSpec list (images opened, one-line errors for unreadable ones)."""
    from ..runtime.control import ControlSpec
    from ..runtime.images import open_image

    count = len(control_images)
    scales = _per_image(control_scales, "--control-scale", count, 1.0)
    starts = _per_image(control_starts, "--control-start", count, 0.0)
    ends = _per_image(control_ends, "--control-end", count, 1.0)
    preprocess = _per_image(control_preprocess, "--control-preprocess", count, "none")
    if len(controlnets) > 1 and len(controlnets) != count:
        _per_image(controlnets, "--controlnet", count, None)
    names = [None] * count if not controlnets else (list(controlnets) * count if len(controlnets) == 1 else list(controlnets))
    if controlnets and not count:
        raise UserError("--controlnet applies to a control image: pass --control-image FILE as well")
    what = (lambda i: f"control image {i + 1}") if count > 1 else (lambda i: "control image")
    return [ControlSpec(open_image(path, what(i)), scales[i], starts[i], ends[i], names[i], preprocess[i],
                        canny_low, canny_high) for i, path in enumerate(control_images)]
