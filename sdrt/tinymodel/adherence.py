"""Prompt adherence from pixels: does a generated image show the shape and colours its caption names?

A hand-written judge for the built-in model's world (`shapes`), so no second model is needed:
- background colour: the most common palette colour along the image border;
- foreground colour: the most common palette colour among the other pixels;
- shape: the largest connected region of the foreground colour, cropped to its bounding box and compared
  (intersection over union on a 24x24 grid) with each shape's template cropped the same way.
Every pixel is named by its nearest palette colour, so soft edges and small colour shifts still count.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .shapes import COLOURS, PALETTE, SHAPES, shape_mask

GRID = 24  # side of the grid masks are compared on
MIN_SHAPE_PIXELS = 40  # smaller foreground regions count as "no shape" (the smallest rendered shape has ~160)
_PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)


@dataclass(frozen=True)
class Judgement:
    """What the judge sees in one image, and whether it matches the caption's (shape, colour, background)."""

    shape: str | None  # None: no foreground region large enough
    colour: str | None
    background: str
    shape_score: float  # IoU of the best-matching template, 0..1

    def matches(self, shape: str, colour: str, background: str) -> bool:
        return (self.shape, self.colour, self.background) == (shape, colour, background)


def palette_labels(image: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the nearest palette colour, per pixel of a uint8 [H, W, 3] image."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    distances = ((pixels[:, None, :] - _PALETTE_RGB[None, :, :]) ** 2).sum(axis=2)
    return distances.argmin(axis=1).reshape(image.shape[:2])


def _border(labels: np.ndarray) -> np.ndarray:
    return np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (stray pixels elsewhere are dropped)."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        region, queue = [], deque([(int(y0), int(x0))])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _to_grid(mask: np.ndarray) -> np.ndarray:
    """The mask cropped to its bounding box and box-averaged onto a GRID x GRID float grid."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8) * 255
    return np.asarray(Image.fromarray(crop).resize((GRID, GRID), Image.BOX), dtype=np.float32) / 255.0


@lru_cache(maxsize=1)
def shape_templates() -> dict[str, np.ndarray]:
    """Each shape rendered large and reduced to the comparison grid, the way `_to_grid` reduces a region."""
    return {s: _to_grid(shape_mask(s, (64.0, 64.0), 60.0, size=128)) for s in SHAPES}


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """(best shape, its soft IoU) for a non-empty boolean mask."""
    grid = _to_grid(mask)
    scores = {name: float(np.minimum(grid, t).sum() / np.maximum(grid, t).sum())
              for name, t in shape_templates().items()}
    best = max(scores, key=scores.get)
    return best, scores[best]


def judge(image: np.ndarray) -> Judgement:
    """Read shape, colour and background off a uint8 [H, W, 3] image."""
    labels = palette_labels(image)
    background = int(np.bincount(_border(labels), minlength=len(COLOURS)).argmax())
    counts = np.bincount(labels.ravel(), minlength=len(COLOURS))
    counts[background] = 0
    if counts.max() < MIN_SHAPE_PIXELS:
        return Judgement(None, None, COLOURS[background], 0.0)
    colour = int(counts.argmax())
    region = largest_region(labels == colour)
    if region.sum() < MIN_SHAPE_PIXELS:
        return Judgement(None, COLOURS[colour], COLOURS[background], 0.0)
    shape, score = classify_shape(region)
    return Judgement(shape, COLOURS[colour], COLOURS[background], score)


@dataclass
class AdherenceScore:
    """Fractions of images whose shape / colour / background / all three match their captions."""

    count: int
    shape: float
    colour: float
    background: float
    all: float

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "shape": self.shape, "colour": self.colour, "background": self.background,
                "all": self.all}


def adherence(images: list[np.ndarray], targets: list[tuple[str, str, str]]) -> AdherenceScore:
    """Score images against their (shape, colour, background) targets."""
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets: give one target per image")
    if not images:
        raise ValueError("no images to score: generate at least one")
    hits = np.zeros((len(images), 4), dtype=bool)
    for i, (image, (shape, colour, background)) in enumerate(zip(images, targets)):
        seen = judge(image)
        hits[i] = (seen.shape == shape, seen.colour == colour, seen.background == background,
                   seen.matches(shape, colour, background))
    shape_rate, colour_rate, background_rate, all_rate = hits.mean(axis=0)
    return AdherenceScore(len(images), float(shape_rate), float(colour_rate), float(background_rate),
                          float(all_rate))


def mean_pairwise_distance(images: list[np.ndarray]) -> float:
    """Diversity: mean RMS pixel distance (0..1 scale) over all pairs of images."""
    if len(images) < 2:
        raise ValueError("diversity needs at least two images")
    flat = np.stack([np.asarray(im, dtype=np.float32).ravel() / 255.0 for im in images])
    sq = (flat * flat).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0) / flat.shape[1]
    n = len(images)
    return float(np.sqrt(d2)[np.triu_indices(n, k=1)].mean())
