"""`--backend auto` when no GPU backend can run: pick ONNX Runtime, OpenVINO f32 or (on a CPU with native bf16)
OpenVINO bf16 by measuring one UNet call at the first request's shape (sdrt.backends.cpu_choice), then run
every component on the winner. bf16 is used only when it also passes the quality gate on this bundle
(sdrt.runtime.bf16_choice); otherwise the fastest exact backend runs. `--exact` (precision fp32) keeps bf16
out of the race.

Deferred to the first request because the winner depends on the size; later requests of other sizes keep
it (one decision per pipeline, so the engines are loaded once). Until then `Pipeline.backend_choice` says
that the choice is pending.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable

from ..backends.cpu_choice import NAMES, CpuDecision, choose_cpu_backend
from ..backends.cpu_features import native_bf16
from ..backends.openvino_engine import openvino_available
from ..backends.probe_feeds import component_feeds
from ..engines.target import component_model_hash
from ..user_cache import cache_root
from .bf16_choice import apply_verdict, judge_bf16
from .bundle import Bundle

log = logging.getLogger(__name__)
PENDING = "backend auto: no GPU backend ({why}); the CPU backend (ONNX Runtime or OpenVINO) is chosen by " \
          "measuring one UNet call at the first request's size"


def decision_folder():
    return cache_root() / "cpu-backend"


def bf16_allowed(precision: str | None) -> tuple[bool, str]:
    """Whether auto may race bf16, and the reason said in the line."""
    if precision is not None:
        return False, f"precision {precision} asked for"
    feature = native_bf16()
    if feature is None:
        return False, "exact fp32: this CPU has no native bf16 (AVX512_BF16 or AMX)"
    if not openvino_available():
        return False, f"exact fp32: native bf16 ({feature}) needs OpenVINO: pip install 'sdrt[openvino]'"
    return True, f"native bf16: {feature}"


@dataclass
class Settled:
    bundle: Bundle  # on the chosen backend and compute precision
    decision: CpuDecision
    line: str  # what ran and why, for the CLI and the log


def _unet_on(bundle: Bundle, backend: str):
    if backend == "openvino-bf16":
        return bundle.engine("unet", "openvino", compute="bf16")
    return bundle.engine("unet", backend, compute="f32")


def decide(bundle: Bundle, height: int, width: int, unet_batch: int, precision: str | None,
           make_pipeline: Callable[[Bundle], Any]) -> Settled:
    """Measure or read the decision for this bundle, shape and thread setting; logs the line. `make_pipeline`
    (sdrt.runtime.Pipeline) runs the bf16 gate's images."""
    spec = bundle.manifest.component("unet", bundle.precision)
    feeds = component_feeds("unet", spec, bundle.manifest.model, height, width, batch=unet_batch)
    unet_hash = component_model_hash(bundle.manifest, "unet", bundle.precision)
    race_bf16, why = bf16_allowed(precision)
    decision = choose_cpu_backend(unet_hash, feeds, bundle.settings.threads, lambda b: _unet_on(bundle, b),
                                  decision_folder(), bf16=race_bf16)
    line = decision.line(bundle.settings.threads) + (f"; {why}" if decision.seconds else "")  # none: no OpenVINO
    backend = decision.backend
    settled = replace(bundle, settings=replace(bundle.settings, backend=backend.removesuffix("-bf16")),
                      compute="f32", compute_components=None)
    if backend == "openvino-bf16":
        verdict = judge_bf16(bundle, make_pipeline)
        if verdict.passed:
            settled = apply_verdict(settled, verdict)
            line += f"; {verdict.line()}; precision {settled.precision_label} (--exact for fp32)"
        else:
            exact = decision.fastest_exact()
            settled = replace(settled, settings=replace(settled.settings, backend=exact))
            line = (f"backend {exact}: auto chose {NAMES[exact]} on CPU, the fastest exact backend: OpenVINO bf16 "
                    f"was faster for {decision.race(bundle.settings.threads)}, but {verdict.line()}; {why}")
            decision = replace(decision, backend=exact, engines={})
    log.info("sdrt --backend auto: %s", line)
    return Settled(settled, decision, line)
