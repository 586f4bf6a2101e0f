"""X/Y/Z grids (the Python API of `sdrt grid`): every cell checked first, text encoded in one run, cells of
one UNet shape sampled as shared batches, then one labelled picture per Z value.

    from sdrt.tools.grid import make_grid
    from sdrt.tools.grid_axes import parse_axis
    from sdrt.tools.grid_plan import GridAxes
    base = GenerationRequest("a red circle on a blue background", steps=20, seed=1)
    grid = make_grid(pipe, base, GridAxes(x=parse_axis("steps=10,20", base), y=parse_axis("sampler=euler,ddim", base)))
    save_png("grid.png", grid.pictures[0], grid.parameters[0])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UserError
from ..runtime.parameters import quote
from ..runtime.pipeline import Pipeline
from ..runtime.request import GenerationRequest
from ..tinymodel import cell_score
from .batch_run import run_together
from .grid_layout import Layout, layout, render
from .grid_plan import AXIS_NAMES, Cell, GridAxes, plan_cells


@dataclass
class CellResult:
    cell: Cell
    image: np.ndarray  # uint8 [H, W, 3]
    parameters: str  # the cell's own A1111 parameters text
    seconds: float  # its share of its batch's wall time (sdrt.tools.batch_run)
    batch: int
    score: dict[str, object] | None  # adherence on the built-in model (cell_score.score)


@dataclass
class GridResult:
    axes: GridAxes
    cells: list[CellResult]
    pictures: list[np.ndarray]  # one labelled grid per Z value
    parameters: list[str]  # the `parameters` text of each picture
    layouts: list[Layout]


def make_grid(pipe: Pipeline, base: GenerationRequest, axes: GridAxes, max_rows: int = 8,
              score: bool | None = None, show_scores: bool = False, zoom: int | None = None,
              done: Callable[[int, int], None] | None = None) -> GridResult:
    """Run the grid. `score`: adherence per cell (None: only on the built-in model); `show_scores` writes it
    under each cell; `done(finished, total)` after each cell."""
    cells = plan_cells(base, axes)
    sizes = [_checked(pipe, cell, axes) for cell in cells]
    score = cell_score.is_builtin(pipe.model) if score is None else score
    if score and cell_score.caption_target(base.prompt) is None:
        raise UserError(f"cannot score {base.prompt!r}: adherence needs a caption of the built-in model, e.g. "
                        "'a red circle on a blue background'")
    conds = pipe.conditioning([c.request for c in cells], sizes)
    generations = [pipe.prepare(c.request, cond=cond) for c, cond in zip(cells, conds)]
    count = [0]

    def finished(_: int, __: object) -> None:
        count[0] += 1
        if done is not None:
            done(count[0], len(cells))

    ran = run_together(pipe, generations, max_rows, done=finished)
    results = [CellResult(cell, r.result.images[0], r.result.parameters[0], r.seconds, r.batch,
                          cell_score.score(r.result.images[0], cell.request.prompt) if score else None)
               for cell, r in zip(cells, ran)]
    pictures, parameters, layouts = [], [], []
    for z in range(len(axes.z)):
        mine = [r for r in results if r.cell.z == z]
        picture, grid_layout = _picture(mine, axes, z, show_scores and score, zoom)
        pictures.append(picture)
        layouts.append(grid_layout)
        parameters.append(grid_parameters(mine[0].parameters, axes))
    return GridResult(axes, results, pictures, parameters, layouts)


def _checked(pipe: Pipeline, cell: Cell, axes: GridAxes) -> tuple[int, int]:
    try:
        return pipe.check(cell.request)[1]
    except UserError as exc:
        where = ", ".join(f"{k}={v}" for k, v in cell.settings(axes).items())
        raise UserError(f"grid cell {where}: {exc}") from None


def _picture(cells: list[CellResult], axes: GridAxes, z: int, show_scores: bool,
             zoom: int | None) -> tuple[np.ndarray, Layout]:
    width = max(r.image.shape[1] for r in cells)
    height = max(r.image.shape[0] for r in cells)
    title = f"{axes.z.title}: {axes.z.labels[z]}" if axes.z.key else ""
    columns = list(axes.x.labels) if axes.x.key else [""]
    rows = list(axes.y.labels) if axes.y.key else [""]
    grid_layout = layout(width, height, columns, rows, axes.x.title, axes.y.title, title, show_scores, zoom)
    images = {(r.cell.y, r.cell.x): r.image for r in cells}
    captions = {(r.cell.y, r.cell.x): cell_score.caption(r.score) for r in cells} if show_scores else None
    return render(grid_layout, images, captions), grid_layout


def grid_parameters(first_cell: str, axes: GridAxes) -> str:
    """The first cell's parameters text plus the axes, as A1111's X/Y/Z plot names them (X Type, X Values)."""
    extra = []
    for name, axis in zip(AXIS_NAMES, axes):
        if axis.key:
            extra.append(f"{name.upper()} Type: {quote(axis.title)}")
            extra.append(f"{name.upper()} Values: {quote(', '.join(axis.labels))}")
    return first_cell + (", " + ", ".join(extra) if extra else "")


def grid_record(grid: GridResult, files: list[str]) -> dict[str, object]:
    """The JSON written next to the grid: axes, and per cell its settings, request, seconds, file and box."""
    axes = {name: {"key": a.key, "title": a.title, "values": list(a.labels)}
            for name, a in zip(AXIS_NAMES, grid.axes) if a.key}
    cells = []
    for r in grid.cells:
        box = grid.layouts[r.cell.z].cells[(r.cell.y, r.cell.x)]
        request = {f.name: getattr(r.cell.request, f.name) for f in dataclasses.fields(r.cell.request)
                   if isinstance(getattr(r.cell.request, f.name), (int, float, str, dict, type(None)))}
        entry = {"x": r.cell.x, "y": r.cell.y, "z": r.cell.z, "settings": r.cell.settings(grid.axes),
                 "request": request, "size": [r.image.shape[1], r.image.shape[0]], "seconds": round(r.seconds, 4),
                 "batch": r.batch, "file": files[r.cell.z], "box": list(box), "parameters": r.parameters}
        if r.score is not None:
            entry["adherence"] = r.score
        cells.append(entry)
    return {"axes": axes, "files": files, "cells": cells}
