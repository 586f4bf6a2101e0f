"""Opening a bundle component on OpenVINO: where its compiled blobs are cached, and the bf16 gate.

Cache folder: <sdrt cache>/openvino/compiled/<sha256 of the graph's files, from the manifest>/, so a
re-exported or edited bundle never meets a blob of its old weights (OpenVINO's own cache key is not
trusted to cover external weight files). Each folder holds about one copy of the graph's weights; it is
safe to delete (the next load recompiles). SDRT_OPENVINO_CACHE=off turns the cache off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..engines.target import component_model_hash
from ..manifest import ComponentSpec, Manifest
from ..user_cache import cache_root
from .openvino_engine import OpenVinoEngine, import_openvino
from .openvino_gate import bf16_gate, gate_key

CACHE_SWITCH = "SDRT_OPENVINO_CACHE"
log = logging.getLogger(__name__)


def compiled_cache_dir(model_hash: str) -> Path | None:
    """The blob folder for one graph; None (compile every time) when switched off or not writable."""
    if os.environ.get(CACHE_SWITCH, "").lower() in ("0", "off", "no", "false"):
        return None
    folder = cache_root() / "openvino" / "compiled" / model_hash[:24]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("OpenVINO compiled-model cache off: cannot create %s (%s)", folder, exc.strerror or exc)
        return None
    return folder


def gate_folder() -> Path:
    return cache_root() / "openvino" / "bf16-gate"


def open_openvino_engine(component: str, path: str | os.PathLike, spec: ComponentSpec, manifest: Manifest,
                         graph_precision: str, threads: int = 0, precision: str = "f32") -> OpenVinoEngine:
    """The component's engine; in bf16 only after the gate passed (UserError naming the figures otherwise)."""
    ov = import_openvino()
    model_hash = component_model_hash(manifest, component, graph_precision)
    cache = compiled_cache_dir(model_hash)
    engine = OpenVinoEngine(component, path, spec, threads, precision, cache)
    if precision == "bf16":
        bf16_gate(component, spec, manifest.model, engine,
                  lambda: OpenVinoEngine(component, path, spec, threads, "f32", cache),
                  gate_folder(), gate_key(component, model_hash, ov.__version__))
    return engine
