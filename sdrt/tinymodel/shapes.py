"""The built-in model's world: flat-coloured shapes on flat backgrounds, rendered procedurally with numpy.

A world this small is learnable by a tiny model in minutes on a CPU, and every caption is checkable from
the pixels alone (see `adherence`), so quality measures mean something. Rendering is deterministic: the same
seed always gives the same scenes, captions and pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64

# Named colours, chosen far apart in RGB so that a nearest-colour rule can name any rendered pixel.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "cyan": (40, 210, 220),
    "purple": (150, 50, 200),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "cross")

# Shape extent: half of the bounding box side, in pixels.
MIN_HALF_SIZE = 9
MAX_HALF_SIZE = 22
MARGIN = 3  # pixels kept free between the shape and the image border

# The first template is the canonical one (evaluation and the demo use it); the others teach the text
# encoder that word order and filler words vary.
CAPTION_TEMPLATES = (
    "a {colour} {shape} on a {background} background",
    "a {colour} {shape} on {background}",
    "{colour} {shape}, {background} background",
)


@dataclass(frozen=True)
class Scene:
    """One image's content: what the caption says plus where the shape sits."""

    shape: str
    colour: str
    background: str
    centre: tuple[float, float]  # (x, y) in pixels
    half_size: float

    def caption(self, template: int = 0) -> str:
        return CAPTION_TEMPLATES[template].format(colour=self.colour, shape=self.shape, background=self.background)


EXAMPLE_CAPTIONS = (  # one of each shape and most colours: the demo's grid and the quality yardstick's prompts
    "a red circle on a blue background",
    "a yellow triangle on a black background",
    "a white square on a green background",
    "a purple cross on a yellow background",
    "a cyan circle on a purple background",
    "a black triangle on a white background",
    "a green square on a red background",
    "a blue cross on a cyan background",
)


def caption_for(shape: str, colour: str, background: str) -> str:
    """The canonical caption, e.g. 'a red circle on a blue background'."""
    return CAPTION_TEMPLATES[0].format(colour=colour, shape=shape, background=background)


def shape_mask(shape: str, centre: tuple[float, float], half_size: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size] mask of `shape`, sampled at pixel centres (hard edges, no anti-aliasing)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = x - centre[0], y - centre[1]
    r = half_size
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":  # apex up, base at the bottom of the box: width grows linearly downwards
        depth = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
        return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= r * depth)
    if shape == "cross":  # a plus sign whose arms are a third of the box wide
        arm = r / 3
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        return inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    raise ValueError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size, 3] image of the scene."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = PALETTE[scene.background]
    image[shape_mask(scene.shape, scene.centre, scene.half_size, size)] = PALETTE[scene.colour]
    return image


def random_scene(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                 background: str | None = None, size: int = IMAGE_SIZE) -> Scene:
    """A scene with the given (or random) content at a random size and position; colour != background."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or COLOURS[rng.integers(len(COLOURS))]
    if background is None:
        others = [c for c in COLOURS if c != colour]
        background = others[rng.integers(len(others))]
    if colour == background:
        raise ValueError(f"the shape and the background are both {colour}: choose different colours")
    half = float(rng.uniform(MIN_HALF_SIZE, MAX_HALF_SIZE))
    low, high = MARGIN + half, size - MARGIN - half
    centre = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
    return Scene(shape, colour, background, centre, half)


def make_dataset(count: int, seed: int) -> tuple[np.ndarray, list[Scene], list[str]]:
    """`count` images (uint8 [N, 64, 64, 3]), their scenes and captions (templates drawn at random)."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    scenes, captions = [], []
    for i in range(count):
        scene = random_scene(rng)
        images[i] = render(scene)
        scenes.append(scene)
        captions.append(scene.caption(int(rng.integers(len(CAPTION_TEMPLATES)))))
    return images, scenes, captions


def all_prompts() -> list[tuple[str, str, str]]:
    """Every (shape, colour, background) combination the model was trained on."""
    return [(s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if c != b]
