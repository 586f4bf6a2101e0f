"""The bf16 gate: before a component runs in OpenVINO bf16, its output on fixed inputs is compared with the
same graph in OpenVINO f32, with the export gate's metrics (sdrt/export/gate.py): rel = max|bf16 - f32| /
max|f32| and the cosine between the flattened outputs.

Thresholds: rel <= 5e-2 and cosine >= 0.999. Measured: issue 16's mid UNet (SD 1.5 widths, 512x512) gave
rel 2.5e-2, cosine 0.99966; the tiny test models give 1e-2 .. 2e-2 (docs/runtime.md, "OpenVINO"). bf16 keeps
8 mantissa bits (fp16 keeps 11), hence a looser relative limit than fp16's 2e-2; the cosine limit is fp16's.
A broken graph, an overflow or a NaN gives O(1) errors and fails at once.

The gate runs at the bundle's default image size (not its smallest: see the dynamic-shape defect in
openvino_engine.py) and its result, pass or fail, is stored per
component graph, OpenVINO version and CPU (decision_cache), so each bundle is checked once per machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..manifest import ComponentSpec, ModelInfo
from .decision_cache import cpu_model, read_record, write_record
from .engine import Engine, run_engine
from .probe_feeds import component_feeds, relative_error

BF16_THRESHOLDS = {"rel": 5e-2, "cosine": 0.999}


def gate_key(component: str, model_hash: str, openvino_version: str) -> dict:
    return {"check": "openvino-bf16-gate", "reference": "f32 compiled uncached", "component": component,
            "model": model_hash,
            "openvino": openvino_version, "cpu": cpu_model(), "thresholds": BF16_THRESHOLDS}


def bf16_gate(component: str, spec: ComponentSpec, model: ModelInfo, bf16: Engine,
              make_f32: Callable[[], Engine], cache_folder: str | Path, key: dict) -> dict:
    """Pass (the figures) or raise the one-line refusal; measured once per key (see module doc)."""
    record = read_record(cache_folder, key)
    if record is None:
        height, width = model.default_size
        feeds = component_feeds(component, spec, model, height, width)
        expected = run_engine(make_f32(), feeds)
        rel, cosine = relative_error(run_engine(bf16, feeds), expected)
        record = {"rel": rel, "cosine": cosine, "size": [height, width],
                  "passed": rel <= BF16_THRESHOLDS["rel"] and cosine >= BF16_THRESHOLDS["cosine"]}
        write_record(cache_folder, key, record)
    if not record["passed"]:
        raise UserError(
            f"--precision bf16 refused: OpenVINO bf16 changes the {component} output by {record['rel']:.2e} "
            f"relative (limit {BF16_THRESHOLDS['rel']:.0e}), cosine {record['cosine']:.5f} (limit "
            f"{BF16_THRESHOLDS['cosine']}) against f32 on fixed inputs: use --precision fp32")
    return record
