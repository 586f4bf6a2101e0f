"""The quantize gate: the staged int8 UNet against the exact fp32 pipeline, on every CPU backend that will run
it, through the one yardstick (sdrt.quality.runner.compare_pipelines and sdrt.quality.gate.verdict).

The staged graph is not in the bundle yet (it joins only after passing), so the candidate pipeline is the
bundle's fp32 pipeline with its UNet engine swapped for one on the staged file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..manifest import ComponentSpec
from ..quality.gate import QualitySummary, Verdict, verdict
from ..quality.runner import compare_pipelines


@dataclass
class BackendFigures:
    backend: str
    summary: QualitySummary
    verdict: Verdict

    def line(self) -> str:
        s = self.summary
        figures = (f"median PSNR {s.median_psnr_db:.1f} dB, worst {s.worst_psnr_db:.1f} dB, max diff "
                   f"{s.max_diff:.0f}/255")
        if s.adherence_exact is not None:
            figures += f", adherence {s.adherence_candidate:.2f} (exact {s.adherence_exact:.2f})"
        return f"{self.backend}: {figures}"

    def as_dict(self) -> dict:
        out = self.summary.as_dict()
        out.pop("images")
        return {**out, "passed": self.verdict.passed, "failures": self.verdict.failures}


class ReferenceImages:
    """The exact pipeline's images are the same for every backend's (and every variant's) comparison:
    generate each request once."""

    def __init__(self, pipe) -> None:
        self._pipe, self._done = pipe, {}

    def generate(self, request):
        key = repr(request)
        if key not in self._done:
            self._done[key] = self._pipe.generate(request)
        return self._done[key]


def staged_engine(backend: str, graph: Path, spec: ComponentSpec, threads: int, spin: bool):
    if backend == "openvino":
        from ..backends.openvino_engine import OpenVinoEngine

        return OpenVinoEngine("unet", graph, spec, threads, "f32", None)
    from ..backends.ort_engine import OrtEngine, SessionSettings

    return OrtEngine("unet", graph, spec, SessionSettings(backend="ort-cpu", threads=threads, spin=spin))


def gate_int8(bundle: Path, reference, graph: Path, spec: ComponentSpec, backends: Sequence[str],
              requests: Sequence, threads: int = 0, spin: bool = False,
              say: Callable[[str], None] = lambda m: None) -> list[BackendFigures]:
    """Compare the staged graph on each backend with the exact images of `reference` (the fp32 pipeline)."""
    from ..runtime.pipeline import Pipeline

    memo = reference if isinstance(reference, ReferenceImages) else ReferenceImages(reference)
    figures = []
    for backend in backends:
        candidate = Pipeline.load(str(bundle), backend=backend, precision="fp32", threads=threads, spin=spin)
        candidate.use_engine("unet", staged_engine(backend, graph, spec, threads, spin))
        summary = compare_pipelines(memo, candidate, requests)
        figures.append(BackendFigures(backend, summary, verdict(summary)))
        say(f"gate {figures[-1].line()}: {'passed' if figures[-1].verdict.passed else 'failed'}")
    return figures
