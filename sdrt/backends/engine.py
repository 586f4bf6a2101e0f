"""The one interface the pipelines see: a compiled model with named inputs and named outputs.

Backends (ONNX Runtime on CPU/CUDA/TensorRT-EP, native TensorRT) implement `Engine`. The pipeline never
knows which one it holds, so timing, guidance and sampling code is written once.

Buffer contract: `run` copies the feeds into buffers the engine owns (one set per input-shape signature, so a
GPU backend can bind device memory once and replay it) and returns its own output buffers (TensorRT returns copies
of its pinned staging, which its cache frees when it evicts a shape set). Those arrays are
valid until the next `run` with the same input shapes; a caller that keeps an output longer copies it.
A read-only feed that is the very array given last time for that input is not copied again (the prompt
embeddings of a sampling loop): callers mark such constant arrays read-only.

Threads: every engine has a `lock` (engines that share device state, as TensorRT engines of one session
sharing activation memory and a stream, share one lock). `run` holds it, so the engine's buffers are never
filled by two threads at once; `run_engine` holds it across the run AND the copy of the outputs, so a
caller gets arrays no other thread can overwrite. Many threads may share one engine through `run_engine`.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager, Mapping, Protocol

import numpy as np

from ..errors import UserError
from ..manifest import BundleError, ComponentSpec


@dataclass(frozen=True)
class IOSpec:
    """One input or output of an engine: name, numpy dtype, shape (dynamic dims named, e.g. "batch")."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str, ...]


class Engine(Protocol):
    """A compiled model. Implementations: ort_engine.OrtEngine (every ONNX Runtime provider) and
    trt_engine.TrtEngine (opened through gpu_engines)."""

    name: str  # component name, e.g. "unet"
    inputs: Mapping[str, IOSpec]
    outputs: Mapping[str, IOSpec]
    lock: threading.RLock  # held by run; see the module doc

    @property
    def providers(self) -> list[str]:
        """Execution providers actually in use, best first (what the backend really runs on)."""
        ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluate on `feeds` (every input, by name); returns engine-owned output buffers (see module doc)."""
        ...


def engine_lock(engine: Engine) -> ContextManager:
    """The engine's lock, to hold while reading its output buffers (stand-ins without one: no lock)."""
    return getattr(engine, "lock", None) or nullcontext()


def run_engine(engine: Engine, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`engine.run` with outputs the caller owns: the run and the copy happen under the engine's lock, so
    any number of threads may call this on one engine. (Stand-ins without a lock run unguarded.)"""
    with engine_lock(engine):
        return {name: np.array(value, copy=True) for name, value in engine.run(feeds).items()}


def batch_range(engine: Engine) -> tuple[int, int | None]:
    """(smallest, largest) batch the engine accepts: a TensorRT engine's profiles bound both; engines without
    profiles take any batch (1, None)."""
    return max(int(getattr(engine, "min_batch", 1) or 1), 1), getattr(engine, "max_batch", None)


def run_rows(engine: Engine, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`run_engine` for feeds whose axis 0 is the batch (text encoders, VAE, ControlNets): a batch above the
    engine's largest profile runs in chunks, one below its smallest is padded with copies of its last row
    (outputs of padding rows dropped). Rows are independent in these graphs, so the result is the same."""
    low, high = batch_range(engine)
    rows = len(next(iter(feeds.values())))
    if low <= rows and (high is None or rows <= high):
        return run_engine(engine, feeds)
    step = high or rows
    parts = []
    for start in range(0, rows, step):
        chunk = {n: np.asarray(v)[start:start + step] for n, v in feeds.items()}
        used = len(next(iter(chunk.values())))
        if used < low:
            chunk = {n: np.concatenate([v, np.repeat(v[-1:], low - used, axis=0)]) for n, v in chunk.items()}
        parts.append({n: v[:used] for n, v in run_engine(engine, chunk).items()})
    return {n: np.concatenate([p[n] for p in parts]) if len(parts) > 1 else parts[0][n] for n in parts[0]}


def check_feeds(engine_name: str, inputs: Mapping[str, IOSpec], feeds: Mapping[str, np.ndarray]) -> None:
    """Fail with the engine's and the input's name when a feed is missing, extra or has the wrong rank or a
    fixed dimension that disagrees: such a mismatch is a bug in the caller, better caught by name than deep
    inside the backend."""
    missing = set(inputs) - set(feeds)
    extra = set(feeds) - set(inputs)
    if missing or extra:
        raise ValueError(f"{engine_name}: feeds do not match the graph inputs "
                         f"(missing {sorted(missing)}, unexpected {sorted(extra)})")
    for name, spec in inputs.items():
        shape = np.shape(feeds[name])
        if len(shape) != len(spec.shape) or any(
            isinstance(want, int) and want != got for want, got in zip(spec.shape, shape)
        ):
            raise ValueError(f"{engine_name}: input {name!r} has shape {shape}, the graph expects {spec.shape}")


def check_dtypes(engine_name: str, inputs: Mapping[str, IOSpec], feeds: Mapping[str, np.ndarray]) -> None:
    """Feeds are cast to the graph's dtypes, but only within a kind (float64 -> float32, not float -> int)."""
    for name, value in feeds.items():
        have, want = np.asarray(value).dtype, inputs[name].dtype
        if have != want and not np.can_cast(have, want, "same_kind"):
            raise UserError(f"{engine_name} input {name} must be {want}, got {have}")


def check_against_manifest(name: str, spec: ComponentSpec, inputs: Mapping[str, IOSpec],
                           outputs: Mapping[str, IOSpec]) -> None:
    """The graph file must have the inputs and outputs the manifest promises: catches a swapped file."""
    for kind, want, have in (("input", spec.inputs, inputs), ("output", spec.outputs, outputs)):
        for t in want:
            if t.name not in have:
                raise BundleError(f"{name} graph has no {kind} {t.name!r} although the manifest lists it: "
                                  "the bundle is inconsistent, re-export the model (sdrt export)")
