"""The picture of a grid: cells in rows and columns, axis titles and value labels that never overlap.

Every text gets its own box (column labels above their column, row labels left of their row, captions
under their cell, titles in bands of their own) and is fitted into it: wrapped at spaces, shrunk down to a
minimum size, words broken when one alone is wider than the box, and cut with "…" only if even that does
not fit. Small images are shown enlarged (nearest neighbour, `zoom`) so 64-pixel cells still carry
readable labels; text sizes follow the shown cell size, so 1024-pixel cells get large type.
Pillow's built-in scalable font (ImageFont.load_default(size=...), Pillow >= 10.1) needs no font files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

MIN_SHOWN = 128  # cells smaller than this are enlarged by an integer zoom
MIN_FONT = 9
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


@lru_cache(maxsize=64)
def font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class TextBox:
    """Lines of text at one size, centred in `box` (left, top, right, bottom)."""

    lines: tuple[str, ...]
    size: int
    box: tuple[int, int, int, int]

    def extents(self) -> list[tuple[int, int, int, int]]:
        """Where each drawn line's ink lies: inside `box` by construction (tests check it)."""
        left, top, right, bottom = self.box
        height = line_height(self.size) * len(self.lines)
        y = top + (bottom - top - height) // 2
        out = []
        for line in self.lines:
            x0, y0, x1, y1 = font(self.size).getbbox(line)
            x = left + (right - left - (x1 - x0)) // 2 - x0
            out.append((x + x0, y + y0, x + x1, y + y1))
            y += line_height(self.size)
        return out


@dataclass
class Layout:
    width: int
    height: int
    zoom: int
    caption_size: int = 0  # font size of the captions under cells (0: no captions)
    cells: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)  # (row, col) -> box
    texts: list[TextBox] = field(default_factory=list)


def line_height(size: int) -> int:
    return math.ceil(size * 1.25)


def fit_text(text: str, width: int, height: int, size: int) -> tuple[tuple[str, ...], int]:
    """(lines, font size) for `text` in a width x height box: the largest size <= `size` at which the wrapped
    text fits; at MIN_FONT, words broken and the last line cut with "…" if still needed."""
    for s in range(max(size, MIN_FONT), MIN_FONT - 1, -1):
        lines = _wrap(text, width, s, break_words=s == MIN_FONT)
        if lines is not None and len(lines) * line_height(s) <= height:
            return tuple(lines), s
    lines = _wrap(text, width, MIN_FONT, break_words=True) or [""]
    keep = max(height // line_height(MIN_FONT), 1)
    if len(lines) > keep:
        lines = lines[:keep]
        lines[-1] = _cut(lines[-1] + "…", width, MIN_FONT)
    return tuple(lines), MIN_FONT


def _width(text: str, size: int) -> float:
    return font(size).getlength(text)


def _wrap(text: str, width: int, size: int, break_words: bool) -> list[str] | None:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if _width(candidate, size) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            if _width(word, size) <= width:
                current = word
                continue
            if not break_words:
                return None
            pieces = _break(word, width, size)
            lines.extend(pieces[:-1])
            current = pieces[-1]
        lines.append(current)
    return lines


def _break(word: str, width: int, size: int) -> list[str]:
    pieces, current = [], ""
    for char in word:
        if current and _width(current + char, size) > width:
            pieces.append(current)
            current = ""
        current += char
    return pieces + [current]


def _cut(line: str, width: int, size: int) -> str:
    while len(line) > 1 and _width(line, size) > width:
        line = line[:-2] + "…"
    return line


def auto_zoom(cell_width: int, cell_height: int) -> int:
    return max(1, math.ceil(MIN_SHOWN / max(min(cell_width, cell_height), 1)))


def layout(cell_width: int, cell_height: int, column_labels: Sequence[str], row_labels: Sequence[str],
           x_title: str = "", y_title: str = "", title: str = "", captions: bool = False,
           zoom: int | None = None) -> Layout:
    """Boxes for a grid of len(row_labels) x len(column_labels) cells of the given image size."""
    zoom = zoom or auto_zoom(cell_width, cell_height)
    shown_w, shown_h = cell_width * zoom, cell_height * zoom
    size = int(min(max(round(min(shown_w, shown_h) / 9), 12), 40))
    gap = max(size // 3, 3)
    band = 2 * line_height(size) + gap  # column labels: up to two lines at full size
    has_rows = any(row_labels)
    row_w = int(min(max(shown_w * 0.75, 7 * size), 12 * size)) if has_rows else 0
    title_h = line_height(size) + gap if title else 0
    x_title_h = line_height(size) + gap if x_title else 0
    caption_h = line_height(max(size - 2, MIN_FONT)) + gap if captions else 0
    columns, rows = max(len(column_labels), 1), max(len(row_labels), 1)
    left = gap + row_w + (gap if has_rows else 0)
    top = gap + title_h + x_title_h + band
    width = left + columns * (shown_w + gap)
    height = top + rows * (shown_h + caption_h + gap)
    out = Layout(width, height, zoom, max(size - 2, MIN_FONT) if captions else 0)

    def text(value: str, box: tuple[int, int, int, int], text_size: int = size) -> None:
        if value:
            lines, fitted = fit_text(value, box[2] - box[0], box[3] - box[1], text_size)
            out.texts.append(TextBox(lines, fitted, box))

    text(title, (gap, gap, width - gap, gap + title_h - gap))
    if x_title:
        text(x_title, (left, gap + title_h, width - gap, gap + title_h + x_title_h - gap))
    if y_title and has_rows:
        text(y_title, (gap, gap + title_h, left - gap, top - gap))
    for c, label in enumerate(column_labels):
        x0 = left + c * (shown_w + gap)
        text(label, (x0, top - band, x0 + shown_w, top - gap))
    for r, label in enumerate(row_labels or [""]):
        y0 = top + r * (shown_h + caption_h + gap)
        if has_rows:
            text(label, (gap, y0, gap + row_w, y0 + shown_h))
        for c in range(columns):
            x0 = left + c * (shown_w + gap)
            out.cells[(r, c)] = (x0, y0, x0 + shown_w, y0 + shown_h)
    return out


def caption_box(out: Layout, row: int, column: int) -> tuple[int, int, int, int]:
    """The box under a cell for its caption (layout(..., captions=True))."""
    x0, _, x1, y1 = out.cells[(row, column)]
    return x0, y1 + 1, x1, y1 + 1 + line_height(out.caption_size)


def render(out: Layout, images: dict[tuple[int, int], np.ndarray],
           captions: dict[tuple[int, int], str] | None = None) -> np.ndarray:
    """uint8 [H, W, 3] of the layout with the images (uint8 [h, w, 3] per (row, col)) and captions."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (out.width, out.height), BACKGROUND)
    texts = list(out.texts)
    for key, box in out.cells.items():
        if key in images:  # scaled to fit its box, aspect kept (a size axis mixes image sizes), centred
            tile = Image.fromarray(images[key])
            scale = min((box[2] - box[0]) / tile.width, (box[3] - box[1]) / tile.height)
            shown = (max(round(tile.width * scale), 1), max(round(tile.height * scale), 1))
            canvas.paste(tile.resize(shown, Image.NEAREST),
                         (box[0] + (box[2] - box[0] - shown[0]) // 2, box[1] + (box[3] - box[1] - shown[1]) // 2))
        if captions and key in captions:
            cap = caption_box(out, *key)
            lines, size = fit_text(captions[key], cap[2] - cap[0], cap[3] - cap[1], out.caption_size)
            texts.append(TextBox(lines, size, cap))
    draw = ImageDraw.Draw(canvas)
    for item in texts:
        for line, (x0, y0, _, _) in zip(item.lines, item.extents()):
            bx0, by0, _, _ = font(item.size).getbbox(line)
            draw.text((x0 - bx0, y0 - by0), line, fill=INK, font=font(item.size))
    return np.asarray(canvas)
