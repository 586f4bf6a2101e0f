"""Prompt adherence of one image of the built-in model: the caption read from the prompt, the image judged by
sdrt.tinymodel.adherence (shape, colour and background read off the pixels)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..manifest import ModelInfo
from .adherence import judge
from .shapes import CAPTION_TEMPLATES, COLOURS, SHAPES

_WORDS = {"colour": "|".join(COLOURS), "shape": "|".join(SHAPES), "background": "|".join(COLOURS)}
_CAPTIONS = [re.compile("^" + re.escape(t).replace(r"\{colour\}", f"(?P<colour>{_WORDS['colour']})")
                        .replace(r"\{shape\}", f"(?P<shape>{_WORDS['shape']})")
                        .replace(r"\{background\}", f"(?P<background>{_WORDS['background']})") + "$")
             for t in CAPTION_TEMPLATES]


def is_builtin(model: ModelInfo) -> bool:
    """Whether a bundle was exported from the built-in model (`sdrt demo`'s cache folder tinyshapes-*)."""
    return bool(model.source) and Path(model.source).parent.name.startswith("tinyshapes-")


def caption_target(prompt: str) -> tuple[str, str, str] | None:
    """(shape, colour, background) of a prompt written in one of the built-in model's caption forms."""
    text = " ".join(prompt.lower().split())
    for pattern in _CAPTIONS:
        match = pattern.match(text)
        if match:
            return match["shape"], match["colour"], match["background"]
    return None


def score(image: np.ndarray, prompt: str) -> dict[str, object] | None:
    """What the judge saw and which parts match the prompt; None when the prompt is no shapes caption."""
    target = caption_target(prompt)
    if target is None:
        return None
    shape, colour, background = target
    seen = judge(image)
    hits = {"shape": seen.shape == shape, "colour": seen.colour == colour, "background": seen.background == background}
    return {**hits, "all": all(hits.values()),
            "seen": {"shape": seen.shape, "colour": seen.colour, "background": seen.background}}


def caption(result: dict[str, object] | None) -> str:
    """Short text for under a grid cell: "3/3", or the parts missed, e.g. "2/3 -bg" or "0/3"."""
    if result is None:
        return "n/a"
    parts = {"shape": "shape", "colour": "colour", "background": "bg"}
    missed = [short for key, short in parts.items() if not result[key]]
    hits = 3 - len(missed)
    return f"{hits}/3" + (" -" + "+".join(missed) if 0 < len(missed) < 3 else "")
