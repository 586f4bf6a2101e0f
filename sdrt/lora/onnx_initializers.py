"""The initializers of an ONNX file, read with numpy alone: the runtime has no `onnx` package, and a LoRA
switch needs the base value of each weight it changes (new = base + delta; restoring = base).

An ONNX file is a protobuf ModelProto; only the path graph (field 7) -> initializer (field 5) -> TensorProto
is walked, with the length prefixes used to skip everything else (nodes, raw bytes), so indexing a multi-GB
graph reads its structure, not its weights. Values are read on demand, from the file (raw_data, float_data,
int32_data for float16) or from the external data file a TensorProto names (location, offset, length), which
must lie inside the graph's folder (symlinks followed): a hostile location is refused before it is opened.
The file is memory-mapped: nothing is copied until a value is asked for.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..manifest import BundleError, bundle_file

_DTYPES = {1: np.dtype("<f4"), 10: np.dtype("<f2"), 11: np.dtype("<f8"), 6: np.dtype("<i4"), 7: np.dtype("<i8")}


@dataclass
class _Entry:
    dims: tuple[int, ...]
    data_type: int
    raw: tuple[int, int] | None = None  # (start, end) of raw_data in the file
    packed: tuple[int, int] | None = None  # float_data (4) / int32_data (5), packed
    packed_field: int = 0
    external: dict[str, str] | None = None


class OnnxInitializers:
    """name -> shape / dtype / value of every initializer of one ONNX file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read {self.path} ({exc}): re-export the model (sdrt export)") from None
        self._entries: dict[str, _Entry] = {}
        try:
            self._index()
        except (IndexError, ValueError) as exc:
            raise BundleError(f"{self.path} is not a readable ONNX file ({exc}): re-export the model "
                              "(sdrt export)") from None

    def _index(self) -> None:
        data = memoryview(self._map)
        for field, _, start, end in _fields(data, 0, len(data)):
            if field == 7:
                for gfield, _, gs, ge in _fields(data, start, end):
                    if gfield == 5:
                        name, entry = _tensor(data, gs, ge)
                        self._entries[name] = entry

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].dims

    def dtype(self, name: str) -> np.dtype:
        return _DTYPES[self._entries[name].data_type]

    def array(self, name: str) -> np.ndarray:
        """A copy of the initializer's value, in its own dtype and shape."""
        entry = self._entries[name]
        dtype = _DTYPES.get(entry.data_type)
        if dtype is None:
            raise BundleError(f"initializer {name} of {self.path.name} has ONNX type {entry.data_type}, which sdrt "
                              "cannot adapt: re-export the model")
        count = int(np.prod(entry.dims)) if entry.dims else 1
        if entry.external is not None:
            location = bundle_file(self.path.parent, entry.external["location"])  # as ONNX Runtime requires
            try:
                offset = int(entry.external.get("offset", 0))
                length = int(entry.external.get("length", count * dtype.itemsize))
                with open(location, "rb") as f:
                    f.seek(offset)
                    raw = f.read(length)
                value = np.frombuffer(raw, dtype=dtype, count=count)
            except (OSError, ValueError) as exc:
                raise BundleError(f"cannot read the external data of {name} in {self.path.name} ({str(exc)[:120]}): "
                                  "re-export the model (sdrt export)") from None
        elif entry.raw is not None:
            value = np.frombuffer(self._map, dtype=dtype, count=count, offset=entry.raw[0])
        elif entry.packed is not None and entry.packed_field == 4:
            value = np.frombuffer(self._map, dtype="<f4", count=count, offset=entry.packed[0])
        elif entry.packed is not None:  # int32_data: float16 bits, one varint each
            value = np.array(_varints(memoryview(self._map), *entry.packed), dtype=np.uint16).view(np.float16)
        else:
            value = np.zeros(count, dtype=dtype)
        return np.array(value, dtype=dtype).reshape(entry.dims)

    @property
    def has_external_data(self) -> bool:
        return any(e.external is not None for e in self._entries.values())

    def patched(self, values: dict[str, np.ndarray]) -> tuple[bytes, dict[str, np.ndarray]]:
        """(the graph's bytes with the inline initializers among `values` replaced, the values of those stored
        in external data). Replacing bytes in place keeps every offset: the new value has the old dtype and
        shape, so the same byte count."""
        pieces: list[tuple[int, int, bytes]] = []  # (start, end, new bytes), assembled in one copy below
        external = {}
        for name, value in values.items():
            entry = self._entries[name]
            value = np.ascontiguousarray(value, dtype=self.dtype(name))
            if tuple(value.shape) != entry.dims:
                raise ValueError(f"{name}: new value of shape {value.shape}, the graph's is {entry.dims}")
            if entry.external is not None:
                external[name] = value
            elif entry.raw is not None:
                pieces.append((*entry.raw, value.tobytes()))
            else:
                raise BundleError(f"initializer {name} of {self.path.name} is not stored as raw bytes, which sdrt "
                                  "needs to replace it: re-export the model with this sdrt (sdrt export)")
        view, parts, pos = memoryview(self._map), [], 0
        for start, end, new in sorted(pieces):
            parts += [view[pos:start], new]
            pos = end
        parts.append(view[pos:])
        return b"".join(parts), external


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _varints(data: memoryview, start: int, end: int) -> list[int]:
    out, pos = [], start
    while pos < end:
        value, pos = _varint(data, pos)
        out.append(value)
    return out


def _fields(data: memoryview, pos: int, end: int):
    """(field number, wire type, start, end) of each field of one message; varints: start = the value."""
    while pos < end:
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield field, wire, value, pos
        elif wire == 1:
            yield field, wire, pos, pos + 8
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            yield field, wire, pos, pos + length
            pos += length
        elif wire == 5:
            yield field, wire, pos, pos + 4
            pos += 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {pos}")
    if pos != end:
        raise ValueError("truncated message")


def _tensor(data: memoryview, start: int, end: int) -> tuple[str, _Entry]:
    name, dims, data_type = "", [], 0
    entry = _Entry((), 0)
    external: dict[str, str] = {}
    for field, wire, s, e in _fields(data, start, end):
        if field == 1:
            dims.extend([s] if wire == 0 else _varints(data, s, e))
        elif field == 2:
            data_type = s
        elif field == 8:
            name = bytes(data[s:e]).decode("utf-8")
        elif field == 9:
            entry.raw = (s, e)
        elif field in (4, 5) and wire == 2:
            entry.packed, entry.packed_field = (s, e), field
        elif field == 13:
            kv = {f: bytes(data[a:b]).decode("utf-8") for f, _, a, b in _fields(data, s, e)}
            external[kv.get(1, "")] = kv.get(2, "")
    entry.dims, entry.data_type = tuple(dims), data_type
    entry.external = external or None
    return name, entry
