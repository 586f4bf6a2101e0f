"""CUDA graphs keyed by the set of input shapes, in a bounded least-recently-used cache.

A captured CUDA graph replays fixed kernels with fixed launch parameters, so it is only valid for the
input shapes it was captured with (buffer addresses are fixed by allocating every buffer once, at its
largest size). One graph per distinct shape set, as ONNX Runtime does, serves a server that sees a few
sizes without recapturing; the bound keeps a server that sees many sizes from holding a graph (and its
driver memory) for every size it ever saw. Pure Python: tested on CPU with stand-in values.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, Mapping, Sequence, TypeVar

ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]
T = TypeVar("T")


def shape_key(shapes: Mapping[str, Sequence[int]]) -> ShapeKey:
    """Order-independent, hashable key of named shapes: {'b': (2,), 'a': (1, 4)} -> (('a', (1, 4)), ('b', (2,)))."""
    return tuple(sorted((name, tuple(int(d) for d in shape)) for name, shape in shapes.items()))


class LruCache(Generic[T]):
    """At most `capacity` values; inserting beyond it releases the least recently used one.

    `release` frees what a value holds (cudaGraphExecDestroy for graphs); it is called exactly once per
    value: on eviction, on replacement of a key, or on clear(). capacity 0 caches nothing.
    """

    def __init__(self, capacity: int, release: Callable[[T], None] = lambda _: None) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._release = release
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Hashable) -> T | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: T) -> None:
        if self.capacity == 0:
            self._release(value)
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._release(old)
        self._items[key] = value
        while len(self._items) > self.capacity:
            _, evicted = self._items.popitem(last=False)
            self.evictions += 1
            self._release(evicted)

    def pop(self, key: Hashable) -> None:
        """Drop and release one value, if present (a graph whose execution context changed state)."""
        value = self._items.pop(key, None)
        if value is not None:
            self._release(value)

    def clear(self) -> None:
        while self._items:
            _, value = self._items.popitem(last=False)
            self._release(value)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def keys(self) -> Iterator[Hashable]:
        """Least recently used first."""
        return iter(list(self._items))

    def values(self) -> list[T]:
        """Least recently used first; does not count as use."""
        return list(self._items.values())
