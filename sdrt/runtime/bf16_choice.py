"""bf16 on OpenVINO, judged by the quality gate on whole images (sdrt.quality), once per bundle and machine.

Before sdrt computes a bundle in bf16, on its own (`--backend auto` on a CPU with native bf16) or because the
user asked (`--backend openvino --precision bf16`), it generates the gate's requests twice: exact (ONNX Runtime,
fp32) and in bf16 (OpenVINO), same seeds and noise, and applies sdrt.quality.GATE. Two candidates, in order:
every component in bf16, then the UNet alone in bf16 (text encoder and VAE exact); the first that passes is
used, so a bundle whose VAE suffers in bf16 still gets the UNet's speed.

The verdict is stored (decision_cache) under a key of everything it depends on: the hashes of the graphs,
the CPU, OpenVINO's and ONNX Runtime's versions, the thread setting, the gate and its requests; so it is
measured once and again only when one of them changes (a re-export, an upgrade, another machine). Deleting
the cache folder only costs the re-measurement.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..backends.decision_cache import cpu_model, read_record, record_path, write_record
from ..engines.target import component_model_hash
from ..user_cache import cache_root
from .bundle import Bundle

log = logging.getLogger(__name__)
GATE_PROMPTS = 3  # requests per candidate: 3 prompts, 1 seed each, the bundle's default size
GATE_STEPS = 8  # Euler, CFG 7.5: the error of every step's UNet call accumulates into the image as in real use
ALL, UNET_ONLY = "all", ("unet",)


def gate_folder() -> Path:
    return cache_root() / "bf16-gate"


@dataclass(frozen=True)
class Bf16Verdict:
    passed: bool
    components: tuple[str, ...] | None  # computed in bf16 when passed; None: all
    summary: dict[str, Any]  # the passing (or last tried) candidate's QualitySummary.as_dict()
    failures: list[str]  # per tried candidate, why it failed
    record: Path
    measured_now: bool

    def figures(self) -> str:
        s = self.summary
        median, worst = s["median_psnr_db"], s["worst_psnr_db"]
        show = lambda v: "identical" if v is None else f"{v:.1f} dB"  # noqa: E731  (None: identical images)
        return f"median PSNR {show(median)}, worst {show(worst)}, max diff {s['max_diff']:.0f}/255"

    def line(self) -> str:
        where = "measured now" if self.measured_now else f"measured before, {self.record}"
        if not self.passed:
            return f"bf16 failed the quality gate ({'; '.join(self.failures)}; {where})"
        which = "every component" if self.components is None else "the " + ", ".join(self.components) + " only"
        return f"bf16 on {which} passed the quality gate ({self.figures()} against exact; {where})"


def gate_key(bundle: Bundle) -> dict:
    from ..backends.openvino_engine import import_openvino  # noqa: PLC0415
    from ..backends.ort_options import import_onnxruntime  # noqa: PLC0415

    from ..quality import gate  # noqa: PLC0415

    graphs = {name: component_model_hash(bundle.manifest, name, "fp32")
              for name in sorted(bundle.manifest.components["fp32"])}
    return {"check": "bf16-image-gate", "graphs": graphs, "cpu": cpu_model(), "threads": bundle.settings.threads,
            "versions": {"onnxruntime": import_onnxruntime().__version__,
                         "openvino": import_openvino().__version__},
            "gate": gate.GATE.as_dict(), "requests": {"prompts": GATE_PROMPTS, "steps": GATE_STEPS, "sampler": "euler"}}


def _candidate(bundle: Bundle, components: tuple[str, ...] | None) -> Bundle:
    settings = replace(bundle.settings, backend="openvino")
    return replace(bundle, settings=settings, compute="bf16",
                   compute_components=None if components is None else frozenset(components))


def judge_bf16(bundle: Bundle, make_pipeline: Callable[[Bundle], Any],
               progress: Callable[[str], None] | None = None) -> Bf16Verdict:
    """The stored verdict for this bundle and machine, or measure it now (a few images per candidate, on
    pipelines made by `make_pipeline`: sdrt.runtime.Pipeline, passed in since the pipeline calls this)."""
    from ..quality import verdict  # noqa: PLC0415
    from ..quality.runner import compare_pipelines  # noqa: PLC0415
    from .gate_requests import default_requests  # noqa: PLC0415

    key = gate_key(bundle)
    stored = read_record(gate_folder(), key)
    if stored is not None:
        return Bf16Verdict(stored["passed"], _components(stored["components"]), stored["summary"],
                           stored["failures"], record_path(gate_folder(), key), False)
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    exact_bundle = replace(bundle, precision="fp32", settings=replace(bundle.settings, backend="ort-cpu"),
                           compute="f32", compute_components=None)
    exact = make_pipeline(exact_bundle)
    requests = default_requests(exact, steps=GATE_STEPS, prompt_count=GATE_PROMPTS, sampler="euler")
    failures: list[str] = []
    started = time.perf_counter()
    for components in (None, UNET_ONLY):
        name = "every component" if components is None else "the UNet only"
        say(f"checking bf16 on {name} against exact fp32 once for this bundle and CPU "
            f"({len(requests)} images, {GATE_STEPS} steps each; the verdict is cached)")
        summary = compare_pipelines(exact, make_pipeline(_candidate(bundle, components)), requests)
        result = verdict(summary)
        if result.passed:
            break
        failures.append(f"{name}: {'; '.join(result.failures)}")
    facts = {"passed": result.passed, "components": ALL if components is None else list(components),
             "summary": summary.as_dict(), "failures": failures,
             "seconds": round(time.perf_counter() - started, 2),
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = write_record(gate_folder(), key, facts)
    return Bf16Verdict(result.passed, components, facts["summary"], failures, path, True)


def _components(stored: Any) -> tuple[str, ...] | None:
    return None if stored == ALL else tuple(stored)


def apply_verdict(bundle: Bundle, found: Bf16Verdict) -> Bundle:
    """The bundle computing in bf16 where the verdict allows."""
    return _candidate(bundle, found.components)
