"""The batching loop's scheduling policy, kept free of engines so it reads (and tests) as rules.

- A group is a set of jobs whose UNet calls can share one run: same input channels, latent size and text
  length (`Generation.group`). Groups take turns, one UNet run each (`RoundRobin`).
- Inside a group the jobs served longest ago go first, as many as fit in the row cap; a job's rows (its
  images times its CFG copies) are never split, so a job larger than the cap runs alone (`pick`).
- On GPU backends a run is padded to the next of a few fixed sizes, so captured CUDA graphs and TensorRT
  shapes repeat (`padded_rows`); on CPU there is no padding (padding rows would cost real time).
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, Sequence, TypeVar

T = TypeVar("T")
PAD_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def padded_rows(rows: int, cap: int) -> int:
    """The padded batch for `rows` rows: the next size in PAD_SIZES, at most `cap` (never below `rows`)."""
    if rows >= cap:
        return rows
    return min(next((size for size in PAD_SIZES if size >= rows), rows), cap)


def pick(candidates: Sequence[T], rows_of: Callable[[T], int], cap: int,
         same_run: Callable[[T, T], bool] | None = None) -> list[T]:
    """The jobs of the next run, in the order given (least recently served first): the first always, then
    every later one that still fits in `cap` rows (and, for a UNet with one timestep per run, shares the
    first's timestep)."""
    if not candidates:
        return []
    first = candidates[0]
    chosen, used = [first], rows_of(first)
    for job in candidates[1:]:
        if used + rows_of(job) <= cap and (same_run is None or same_run(first, job)):
            chosen.append(job)
            used += rows_of(job)
    return chosen


class RoundRobin:
    """Which group runs next: the group with work that ran longest ago (new groups join at the end)."""

    def __init__(self) -> None:
        self._order: list[Hashable] = []

    def __contains__(self, key: Hashable) -> bool:
        return key in self._order

    def next(self, keys: Iterable[Hashable]) -> Hashable | None:
        present = list(dict.fromkeys(keys))
        for key in present:
            if key not in self._order:
                self._order.append(key)
        self._order = [k for k in self._order if k in present]
        if not self._order:
            return None
        key = self._order.pop(0)
        self._order.append(key)
        return key
