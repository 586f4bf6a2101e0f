"""Run-time LoRA switching: a Pipeline per adapter set, sharing everything the adapters do not change.

`Pipeline.with_loras(loras)` returns a view of the pipeline whose engines for the changed components carry
the adapted weights; components an adapter set does not touch are the base pipeline's own engines (a
UNet-only adapter keeps the base text encoders). Adapted engines are made per component and kept in a small
LRU keyed by the adapters that change that component (file, size, mtime, scale), so switching back to a
recent set costs nothing; the base engines are never modified, so a request without adapters after one
with them runs on exactly the base weights.

How an engine is adapted depends on the backend: ONNX Runtime engines open a second session with the
changed initializers replaced (`OrtEngine.with_initializers`), OpenVINO engines compile the graph again with
those weights' Constants replaced (`OpenVinoEngine.with_initializers`); TensorRT engines built refittable are refit
in place before each run that needs another set (sdrt/backends/trt_refit.py). See docs/lora.md.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Sequence

from ..backends.engine import Engine
from ..backends.graph_cache import LruCache
from ..errors import UserError
from ..lora.adapter import Adapter, read_adapter
from ..lora.options import LoraOption, check_loras
from ..lora.placement import BundleWeights, by_component

DEFAULT_CAPACITY = 4  # adapter sets kept prepared per component (each an ORT session: the weights' size)
MAX_CONCURRENT_BUILDS = 1  # adapter sets built at once: each holds a copy of the adapted weights while it builds,
# so requests naming many new sets at once (e.g. a new scale each) wait in turn instead of multiplying memory


def file_key(path: Path) -> tuple:
    """An adapter file as a cache key: a file replaced on disk is a new adapter."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError:
        return (str(resolved),)  # read_adapter gives the one-line error
    return (str(resolved), stat.st_size, stat.st_mtime_ns)


class LoraSets:
    """The prepared adapter sets of one pipeline (thread-safe). `pipeline` is a sdrt.runtime.pipeline.Pipeline,
    not imported here: the Pipeline imports this module, and makes each view (`Pipeline.adapted`)."""

    def __init__(self, pipeline: Any, capacity: int = DEFAULT_CAPACITY) -> None:
        self.pipeline = pipeline
        self._lock = threading.RLock()
        self._weights: BundleWeights | None = None
        self._adapters: LruCache[Adapter] = LruCache(16)
        self.engines: LruCache[Engine] = LruCache(capacity)  # (component, key) -> adapted engine
        self._views: LruCache[Any] = LruCache(capacity)  # set key -> AdaptedPipeline
        self._building: dict[tuple, threading.Lock] = {}  # set key -> held while that set is built
        self._builds = threading.BoundedSemaphore(MAX_CONCURRENT_BUILDS)

    @property
    def weights(self) -> BundleWeights:
        with self._lock:
            if self._weights is None:
                bundle = self.pipeline.bundle
                self._weights = BundleWeights(bundle.root, bundle.manifest, bundle.precision)
            return self._weights

    def adapter(self, option: LoraOption) -> Adapter:
        key = file_key(option.path)
        adapter = self._adapters.get(key)
        if adapter is None:
            adapter = read_adapter(Path(option.path))
            self._adapters.put(key, adapter)
        return adapter

    def view(self, loras: Sequence[LoraOption]) -> Any:
        """The pipeline with these adapters (the base pipeline itself for none).

        A new set is built under its own lock, not the cache's: while one request's set builds (seconds for a
        large UNet), the serving loop keeps switching between the sets already cached."""
        options = check_loras(loras)
        if not options:
            return self.pipeline
        with self._lock:
            adapters = [(self.adapter(o), float(o.scale)) for o in options]
            keys = by_component(adapters, lambda a, s: (*file_key(a.path), s))
            set_key = tuple(sorted(keys.items()))
            view = self._views.get(set_key)
            if view is not None:
                return view
            building = self._building.setdefault(set_key, threading.Lock())
        with building:  # one build per set: a second request for it waits for the first
            with self._lock:
                view = self._views.get(set_key)
            if view is None:
                view = self._build(adapters, keys, tuple(options))
                with self._lock:
                    self._views.put(set_key, view)
        with self._lock:
            self._building.pop(set_key, None)
        return view

    def _build(self, adapters: list[tuple[Adapter, float]], keys: dict[str, tuple], options: tuple) -> Any:
        with self._builds:
            return self.pipeline.adapted(self._engines_for(adapters, keys), options)

    def _engines_for(self, adapters: list[tuple[Adapter, float]], keys: dict[str, tuple]) -> dict[str, Engine]:
        wanted = {c: k for c, k in keys.items() if k}
        with self._lock:
            found = {c: self.engines.get((c, k)) for c, k in wanted.items()}
        missing = {c for c, engine in found.items() if engine is None}
        values = {}
        if missing:
            touching = [(a, s) for a, s in adapters if any(m.component in missing for m in a.modules)]
            values = self.weights.adapted(touching)  # one-line UserError unless every adapter fits
        engines = {}
        for component, key in wanted.items():
            engine = found[component]
            if engine is None:
                engine = adapt_engine(self.pipeline.engine(component), values.get(component, {}), key, self.weights,
                                      component)
                with self._lock:
                    self.engines.put((component, key), engine)
            engines[component] = engine
        return engines


def set_tag(key: tuple) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()[:16]


def adapt_engine(base: Engine, values: dict, key: tuple, weights: BundleWeights, component: str) -> Engine:
    """The engine of `component` with `values` (initializer -> array) in place of the base weights."""
    if hasattr(base, "with_initializers"):  # every ONNX Runtime provider, OpenVINO
        return base.with_initializers(values, set_tag(key))
    if hasattr(base, "engine") and hasattr(base, "stream"):  # a native TensorRT engine
        from ..backends.trt_refit import RefitView, switch_for  # noqa: PLC0415  (TensorRT only when used)

        return RefitView(base, switch_for(base, lambda names: weights.base(component, names)), key, values)
    raise UserError(f"the {component} engine of this backend cannot take LoRA adapters: use --backend ort-cpu, "
                    "ort-cuda, ort-trt, trt or openvino")
