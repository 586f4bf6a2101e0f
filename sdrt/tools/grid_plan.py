"""The cells of an X/Y/Z grid: one request per (x, y, z) value combination, the base request changed by
each axis in turn (x, then y, then z), so every cell keeps the base seed unless seed is an axis."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..runtime.request import GenerationRequest
from .grid_axes import NO_AXIS, Axis

AXIS_NAMES = ("x", "y", "z")
MAX_CELLS = 1000  # images in one grid run (all its pictures), checked before any cell or output is made


@dataclass(frozen=True)
class Cell:
    x: int
    y: int
    z: int
    request: GenerationRequest

    def settings(self, axes: "GridAxes") -> dict[str, str]:
        """The cell's axis values as labels, e.g. {"steps": "20", "sampler": "Euler a"}."""
        return {axis.key: axis.labels[index] for axis, index in zip(axes, (self.x, self.y, self.z)) if axis.key}


@dataclass(frozen=True)
class GridAxes:
    x: Axis = NO_AXIS
    y: Axis = NO_AXIS
    z: Axis = NO_AXIS

    def __iter__(self):
        return iter((self.x, self.y, self.z))

    def check(self) -> None:
        """Refuse an axis key used twice, and size next to width or height (size sets both)."""
        keys = [a.key for a in self if a.key]
        for key in keys:
            if keys.count(key) > 1:
                raise UserError(f"{key} is on two axes: give each setting one axis")
        if "size" in keys and ({"width", "height"} & set(keys)):
            raise UserError("size sets width and height: use either size or width/height as axes")
        cells = len(self.x) * len(self.y) * len(self.z)
        if cells > MAX_CELLS:
            shape = " x ".join(str(len(a)) for a in self if a.key)
            raise UserError(f"this grid has {cells} cells ({shape}), more than one grid run makes ({MAX_CELLS}): "
                            "use fewer values per axis, or split it into several grids")


def plan_cells(base: GenerationRequest, axes: GridAxes) -> list[Cell]:
    """Every cell, Z outermost then Y then X (the order of the grid images and the JSON)."""
    axes.check()
    if base.batch != 1:
        raise UserError("a grid cell holds one image: leave batch at 1 (use seed as an axis for more seeds)")
    cells = []
    for z in range(len(axes.z)):
        for y in range(len(axes.y)):
            for x in range(len(axes.x)):
                request = axes.z.apply(axes.y.apply(axes.x.apply(base, x), y), z)
                cells.append(Cell(x, y, z, request))
    return cells
