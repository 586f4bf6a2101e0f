"""Pick the optimization profile of a dynamic engine that serves a request best.

TensorRT tunes kernels for a profile's opt shape, and any shape inside [min, max] runs, but slower the
further it is from opt; a wide max also costs activation memory. So among the profiles that contain the
request we prefer the one whose opt is closest and whose max is tightest: score = sum over axes of
|opt - x| + 0.5 * (max - x) (the rule the Stable-Diffusion-WebUI-TensorRT extension uses). Requests that
no profile contains are refused with the ranges that are supported, because TensorRT itself would only
report a failed set_input_shape.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..errors import UserError
from .profiles import ShapeRange

Shapes = Mapping[str, Sequence[int]]


def profile_score(profile: Mapping[str, ShapeRange], shapes: Shapes) -> float:
    """Lower is better; only meaningful for a profile that contains `shapes`."""
    score = 0.0
    for name, shape in shapes.items():
        r = profile[name]
        score += sum(abs(o - x) + 0.5 * (hi - x) for x, o, hi in zip(shape, r.opt, r.max))
    return score


def choose_profile(profiles: Sequence[Mapping[str, ShapeRange]], shapes: Shapes, engine: str = "engine") -> int:
    """Index of the best profile containing every input shape; UserError listing the supported ranges if none.

    Ties go to the lower index, so the choice is deterministic.
    """
    if not profiles:
        raise UserError(f"{engine} has no optimization profiles: rebuild it with sdrt build")
    names = set(profiles[0])
    if set(shapes) != names:
        missing, extra = sorted(names - set(shapes)), sorted(set(shapes) - names)
        raise UserError(f"{engine} inputs are {sorted(names)}; missing {missing}, unexpected {extra}")
    fitting = [
        (profile_score(p, shapes), i)
        for i, p in enumerate(profiles)
        if all(p[n].contains(tuple(s)) for n, s in shapes.items())
    ]
    if fitting:
        return min(fitting)[1]
    asked = ", ".join(f"{n} {tuple(s)}" for n, s in sorted(shapes.items()))
    allowed = "; ".join(
        f"profile {i}: " + ", ".join(f"{n} {p[n]}" for n in sorted(p)) for i, p in enumerate(profiles)
    )
    raise UserError(
        f"{engine} cannot run {asked}: outside every profile ({allowed}); "
        "pick a size inside them or rebuild with sdrt build --profile covering it"
    )
