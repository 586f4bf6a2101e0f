"""`--backend auto` when no GPU backend can run: pick ONNX Runtime or OpenVINO f32 by measuring one UNet
call at the first request's shape (sdrt.backends.cpu_choice), then run every component on the winner.

Deferred to the first request because the winner depends on the size; later requests of other sizes keep
it (one decision per pipeline, so the engines are loaded once). Until then `Pipeline.backend_choice` says
that the choice is pending.
"""

from __future__ import annotations

import logging

from ..backends.cpu_choice import CpuDecision, choose_cpu_backend
from ..backends.probe_feeds import component_feeds
from ..engines.target import component_model_hash
from ..user_cache import cache_root
from .bundle import Bundle

log = logging.getLogger(__name__)
PENDING = "backend auto: no GPU backend ({why}); the CPU backend (ONNX Runtime or OpenVINO) is chosen by " \
          "measuring one UNet call at the first request's size"


def decision_folder():
    return cache_root() / "cpu-backend"


def decide(bundle: Bundle, height: int, width: int, unet_batch: int) -> CpuDecision:
    """Measure or read the decision for this bundle, shape and thread setting; logs the line."""
    spec = bundle.manifest.component("unet", bundle.precision)
    feeds = component_feeds("unet", spec, bundle.manifest.model, height, width, batch=unet_batch)
    unet_hash = component_model_hash(bundle.manifest, "unet", bundle.precision)
    decision = choose_cpu_backend(unet_hash, feeds, bundle.settings.threads,
                                  lambda backend: bundle.engine("unet", backend), decision_folder())
    log.info("sdrt --backend auto: %s", decision.line(bundle.settings.threads))
    return decision
