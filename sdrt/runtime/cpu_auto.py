"""`--backend auto` when no GPU backend can run: pick ONNX Runtime, OpenVINO f32, (on a CPU with native bf16)
OpenVINO bf16, or the bundle's int8 UNet (`sdrt quantize`) on either, by measuring one UNet call at the first
request's shape (sdrt.backends.cpu_choice), then run every component on the winner. bf16 is used only when it
also passes the quality gate on this bundle (sdrt.runtime.bf16_choice), otherwise the fastest exact backend
runs; an int8 UNet passed the same gate when it was made. `--exact` (precision fp32) keeps both out of the
race; `--precision int8` races the int8 UNet on the two backends only.

Deferred to the first request because the winner depends on the size; later requests of other sizes keep
it (one decision per pipeline, so the engines are loaded once). Until then `Pipeline.backend_choice` says
that the choice is pending.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable

from ..backends.cpu_choice import EXACT, NAMES, CpuDecision, choose_cpu_backend
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


def candidates(bundle: Bundle, precision: str | None) -> tuple[tuple[str, ...], str]:
    """What races (cpu_choice.NAMES), and the reason said in the line."""
    race_bf16, why = bf16_allowed(precision)
    has_int8 = "unet" in bundle.manifest.components.get("int8", {})
    if precision == "int8":
        return ("ort-cpu-int8", "openvino-int8"), "precision int8 asked for"
    names = EXACT + (("openvino-bf16",) if race_bf16 else ())
    if precision is None and has_int8:
        names += ("ort-cpu-int8", "openvino-int8")
        why += "; the bundle's int8 UNet (gated by sdrt quantize)"
    return names, why


def _graphs(bundle: Bundle) -> str:
    """The graph set the non-int8 candidates run: the bundle's (fp32, or fp16 when asked), fp32 under int8."""
    return "fp32" if bundle.precision == "int8" else bundle.precision


def _unet_on(bundle: Bundle, candidate: str):
    if candidate.endswith("-int8"):
        return replace(bundle, precision="int8").engine("unet", candidate.removesuffix("-int8"))
    if candidate.endswith("-bf16"):
        return bundle.engine("unet", candidate.removesuffix("-bf16"), compute="bf16")
    return replace(bundle, precision=_graphs(bundle)).engine("unet", candidate, compute="f32")


def _unet_hash(bundle: Bundle, names: tuple[str, ...]) -> str:
    """The key covers every UNet graph that races: the fp32 one, and the int8 one when it races too."""
    graphs = component_model_hash(bundle.manifest, "unet", _graphs(bundle))
    if not any(n.endswith("-int8") for n in names):
        return graphs
    return f"{graphs}+int8:{component_model_hash(bundle.manifest, 'unet', 'int8')}"


def decide(bundle: Bundle, height: int, width: int, unet_batch: int, precision: str | None,
           make_pipeline: Callable[[Bundle], Any]) -> Settled:
    """Measure or read the decision for this bundle, shape and thread setting; logs the line. `make_pipeline`
    (sdrt.runtime.Pipeline) runs the bf16 gate's images."""
    spec = bundle.manifest.component("unet", _graphs(bundle))
    feeds = component_feeds("unet", spec, bundle.manifest.model, height, width, batch=unet_batch)
    names, why = candidates(bundle, precision)
    decision = choose_cpu_backend(_unet_hash(bundle, names), feeds, bundle.settings.threads,
                                  lambda b: _unet_on(bundle, b), decision_folder(), names)
    line = decision.line(bundle.settings.threads) + (f"; {why}" if decision.seconds else "")  # none: no OpenVINO
    backend = decision.backend
    base = backend.removesuffix("-bf16").removesuffix("-int8")
    settled = replace(bundle, settings=replace(bundle.settings, backend=base), compute="f32",
                      compute_components=None, precision="int8" if backend.endswith("-int8") else _graphs(bundle))
    if backend.endswith("-int8") and precision is None:
        line += "; precision int8 (--exact for fp32)"
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
