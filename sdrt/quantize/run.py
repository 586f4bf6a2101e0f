"""`sdrt quantize BUNDLE --int8` end to end: check the bundle, record calibration feeds, write the QDQ graph in
a staging folder, gate it on every CPU backend that runs it, and commit it (sdrt.quantize.commit) only if
it passed. A failed gate writes nothing and raises a one-line UserError with the measured figures.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from ..manifest import Manifest
from .calibration import CALIBRATION_SAMPLERS, record_unet_feeds
from .commit import commit_int8
from .gate import BackendFigures, gate_int8
from .qdq import QdqOptions, write_qdq_unet

MAX_CALIBRATION_FEEDS = 64  # evenly spaced over the recorded calls: ORT's calibrator runs each one again
METHODS = ("auto", "ort")


class GateFailed(UserError):
    """The int8 UNet missed the quality gate; nothing was written."""


@dataclass
class QuantizeOptions:
    prompts: Sequence[str] | None = None  # None: the built-in list for the model (sdrt.quality.runner)
    prompt_count: int = 4
    calibration_steps: int = 20
    samplers: Sequence[str] = CALIBRATION_SAMPLERS
    method: str = "auto"  # auto = ort (the only one implemented; docs/quantize.md)
    qdq: QdqOptions = field(default_factory=QdqOptions)
    gate_backends: Sequence[str] | None = None  # None: ort-cpu, and openvino when installed
    gate_steps: int = 20
    gate_prompts: int = 4
    threads: int = 0
    spin: bool = False
    force: bool = False


@dataclass
class QuantizeReport:
    manifest: Manifest
    figures: list[BackendFigures]
    record: dict


def check_bundle(bundle: Path, force: bool) -> Manifest:
    manifest = Manifest.load(bundle)
    if "unet" not in manifest.components.get("fp32", {}):
        have = ", ".join(manifest.components) or "none"
        raise UserError(f"bundle {bundle} has no fp32 UNet (it has: {have}), which sdrt quantize starts from: "
                        "re-export with sdrt export --precision fp32 (or both)")
    if "unet" in manifest.components.get("int8", {}) and not force:
        raise UserError(f"bundle {bundle} already has an int8 UNet: pass --force to quantize it again")
    manifest.verify_files(bundle, needed=manifest.needed_files("fp32"))
    return manifest


def default_gate_backends() -> list[str]:
    from ..backends.openvino_engine import openvino_available

    return ["ort-cpu"] + (["openvino"] if openvino_available() else [])


def spaced(feeds: list, most: int) -> list:
    if len(feeds) <= most:
        return feeds
    return [feeds[int(i)] for i in np.linspace(0, len(feeds) - 1, most).round()]


def quantize_bundle(bundle: Path, options: QuantizeOptions = QuantizeOptions(),
                    say: Callable[[str], None] = lambda m: None) -> QuantizeReport:
    from ..export.staging import remove_stale_partials
    from ..export.termination import sigterm_raises
    from ..runtime.pipeline import Pipeline

    if options.method not in METHODS:
        raise UserError(f"unknown --method {options.method!r}: choose one of {', '.join(METHODS)}")
    started = time.perf_counter()
    manifest = check_bundle(bundle, options.force)
    spec = manifest.component("unet", "fp32")
    remove_stale_partials(bundle, say)
    reference = Pipeline.load(str(bundle), backend="ort-cpu", precision="fp32", threads=options.threads,
                              spin=options.spin)
    with sigterm_raises():  # SIGTERM unwinds like Ctrl-C, so the staging folder is removed either way
        return _quantize_staged(bundle, manifest, spec, reference, options, started, say)


def _quantize_staged(bundle: Path, manifest: Manifest, spec, reference, options: QuantizeOptions, started: float,
                     say: Callable[[str], None]) -> QuantizeReport:
    from ..export.staging import create_staging
    from ..quality.runner import default_prompts
    from ..runtime.gate_requests import default_requests
    from ..tinymodel.builtin import DEFAULT_CFG
    from ..tinymodel.cell_score import is_builtin

    builtin = is_builtin(reference.model)
    cfg = DEFAULT_CFG if builtin else 7.5
    staging = create_staging(bundle)
    try:
        prompts = list(options.prompts or default_prompts(builtin, options.prompt_count))
        say(f"recording UNet inputs: {len(prompts)} prompts x {len(options.samplers)} samplers "
            f"({', '.join(options.samplers)}), {options.calibration_steps} steps, CFG {cfg:g}, "
            f"{'x'.join(map(str, reference.model.default_size[::-1]))} px")
        feeds = record_unet_feeds(reference, prompts, options.calibration_steps, options.samplers, cfg)
        used = spaced(feeds, MAX_CALIBRATION_FEEDS)
        say(f"calibrating on {len(used)} of {len(feeds)} recorded UNet calls; writing the QDQ int8 graph")
        graph = staging / "unet.onnx"
        result = write_qdq_unet(bundle / spec.file, graph, used, options.qdq, external_data=bool(spec.external_data))
        extra = [p.name for p in result.files if p != graph]
        staged = replace(spec, file=graph.name, external_data=extra[0] if extra else None,
                         compute_precision="int8-qdq", accuracy={})
        backends = list(options.gate_backends or default_gate_backends())
        requests = default_requests(reference, steps=options.gate_steps, prompt_count=options.gate_prompts,
                                    cfg=cfg)
        say(f"gate: {len(requests)} requests ({options.gate_steps} steps, euler, CFG {cfg:g}) on "
            f"{', '.join(backends)} against exact fp32")
        figures = gate_int8(bundle, reference, graph, replace(staged, file=str(graph)), backends, requests,
                            options.threads, options.spin, say)
        record = {"method": "ort", **options.qdq.as_dict(),
                  "kept_nodes": {k: len(v) for k, v in result.kept_nodes.items()},
                  "quantized_nodes": result.quantized_nodes,
                  "calibration_run": {"prompts": len(prompts), "samplers": list(options.samplers),
                                  "steps": options.calibration_steps, "recorded_calls": len(feeds),
                                  "used_calls": len(used)},
                  "gate": {f.backend: f.as_dict() for f in figures}, "tools": _versions(),
                  "quantized_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "seconds": round(time.perf_counter() - started, 1)}
        failed = [f for f in figures if not f.verdict.passed]
        if failed:
            raise GateFailed("; ".join(f"{f.backend}: {f.verdict.line('the int8 UNet')}" for f in failed)
                             + f" ({'; '.join(f.line() for f in figures)}); nothing was written: keep more in "
                             "fp32 or calibrate on prompts like yours (--calibration-prompts)")
        staged = replace(staged, accuracy={"passed": True, "gate": record["gate"]})
        new = commit_int8(bundle, manifest, staging, staged, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return QuantizeReport(new, figures, record)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from .. import __version__

    out = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "sdrt": __version__}
    try:
        import openvino

        out["openvino"] = openvino.__version__
    except ImportError:
        pass
    return out
