"""Opening a bundle component on OpenVINO, and where its compiled blobs are cached. (bf16's quality gate is
judged on whole images, before any bf16 engine is used: sdrt.runtime.bf16_choice.)

The compiled-blob cache (OpenVINO's CACHE_DIR) is ON unless SDRT_OPENVINO_CACHE=off: it cuts the mid UNet's
load from 3.8 s to 0.63 s, paid on every server start otherwise. Blobs go to <sdrt cache>/openvino/compiled/
<sha256 of the graph's files, from the manifest>/<f32|bf16>/: per graph content, so a re-exported or edited
bundle never meets a blob of its old weights, and per precision because OpenVINO 2026.4 gives a graph's f32
and bf16 blobs the same file name (its cache key leaves INFERENCE_PRECISION_HINT out; measured on the tiny and
the mid UNet: one blob name for both). That shared name was the cause of the cross-precision mix-up that kept
the cache off (one folder for both precisions then, two processes writing and reading the same file); with a
folder per precision no two precisions ever share a file. OpenVinoEngine also checks the precision a compiled
model reports and compiles again without the cache if it is not the one asked for. Each folder holds about
one copy of the weights and is safe to delete.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..engines.target import component_model_hash
from ..manifest import ComponentSpec, Manifest
from ..user_cache import cache_root
from ..engines.profiles import AXIS_ROLES
from .openvino_engine import OpenVinoEngine, import_openvino
from .probe_feeds import component_feeds

CACHE_SWITCH = "SDRT_OPENVINO_CACHE"
log = logging.getLogger(__name__)


def compiled_cache_dir(model_hash: str, precision: str) -> Path | None:
    """The blob folder for one graph and inference precision; None (compile every time) when switched off or
    not writable (see the module doc)."""
    if os.environ.get(CACHE_SWITCH, "").lower() in ("0", "off", "no", "false"):
        return None  # switched off: see the module doc
    folder = cache_root() / "openvino" / "compiled" / model_hash[:24] / precision
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("OpenVINO compiled-model cache off: cannot create %s (%s)", folder, exc.strerror or exc)
        return None
    return folder


def open_openvino_engine(component: str, path: str | os.PathLike, spec: ComponentSpec, manifest: Manifest,
                         graph_precision: str, threads: int = 0, precision: str = "f32") -> OpenVinoEngine:
    """The component's engine, computing in `precision` (f32 | bf16)."""
    import_openvino()
    model_hash = component_model_hash(manifest, component, graph_precision)
    height, width = manifest.model.default_size
    warm = lambda: component_feeds(component, spec, manifest.model, height, width)  # noqa: E731  (see engine)
    return OpenVinoEngine(component, path, spec, threads, precision, compiled_cache_dir(model_hash, precision),
                          warm_feeds=warm if component in AXIS_ROLES else None)
