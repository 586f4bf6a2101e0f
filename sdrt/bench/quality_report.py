"""`sdrt quality`'s stdout table and JSON document.

JSON keys (schema "sdrt-quality/1", the top-level shape of the bench's): schema, settings {bundle, family,
reference {backend, precision}, candidate {backend, precision, mode, backend_choice}, steps, sampler, cfg,
width, height, seeds, prompts, threads, spin, spin_reason}, machine {cpu_count, load_average, platform, python,
onnxruntime}, gate {median_psnr_db, worst_psnr_db, adherence_points}, summary {median_psnr_db, worst_psnr_db
(null: identical images), identical, max_diff, mean_diff, median_ssim, adherence_exact, adherence_candidate},
verdict {passed, failures, line}, images [{prompt, seed, psnr_db (null: identical), max_diff, mean_diff,
ssim, adheres_exact, adheres_candidate}].
Pixel differences are in 0..255 levels; adherence figures are null except on the built-in model's captions.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Sequence

from ..quality.gate import GATE, Gate, QualitySummary, Verdict
from .output import machine_facts

REFERENCE_BACKEND = "ort-cpu"  # the exact mode every other mode is measured against (fp32 on ONNX Runtime)

if TYPE_CHECKING:
    from ..runtime.pipeline import Pipeline
    from ..runtime.request import GenerationRequest

SCHEMA = "sdrt-quality/1"
PROMPT_COLUMN = 48  # longer prompts are cut with "..." in the table (the JSON has them whole)


def mode_name(pipe: "Pipeline") -> str:
    """What the pipeline computes in, as the user names it: 'bf16 on openvino', 'fp32 on ort-cpu', ..."""
    compute = getattr(pipe.bundle, "compute", "f32")
    precision = compute if compute not in ("f32", "fp32") else pipe.bundle.precision
    return f"{precision} on {pipe.bundle.settings.backend}"


def _db(value: float) -> str:
    return "identical" if math.isinf(value) else f"{value:.2f}"


def _db_unit(value: float) -> str:
    return f"{_db(value):>10}" + ("   " if math.isinf(value) else " dB")


def _ssim(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _adheres(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _prompt(text: str) -> str:
    return text if len(text) <= PROMPT_COLUMN else text[:PROMPT_COLUMN - 3] + "..."


def table(settings: dict[str, Any], requests: Sequence["GenerationRequest"], summary: QualitySummary,
          outcome: Verdict, gate: Gate = GATE) -> str:
    adherence = summary.adherence_exact is not None
    lines = [
        f"sdrt quality {settings['bundle']} ({settings['family']}): {settings['candidate']['mode']} against exact "
        f"({settings['reference']['precision']} on {settings['reference']['backend']})",
        f"{len(requests)} image(s): {settings['prompts']} prompt(s) x {settings['seeds']} seed(s), "
        f"{settings['width']}x{settings['height']}, {settings['steps']} steps {settings['sampler']}, "
        f"cfg {settings['cfg']}",
        "",
        f"{'#':>3} {'seed':>5} {'PSNR dB':>10} {'max':>5} {'mean':>7} {'SSIM':>7}"
        + (f" {'adheres exact/cand':>18}" if adherence else "") + "  prompt",
    ]
    for n, (request, image) in enumerate(zip(requests, summary.images), start=1):
        row = (f"{n:>3} {request.seed:>5} {_db(image.psnr_db):>10} {image.max_diff:>5.0f} {image.mean_diff:>7.3f} "
               f"{_ssim(image.ssim):>7}")
        if adherence:
            row += f" {_adheres(image.adheres_exact) + '/' + _adheres(image.adheres_candidate):>18}"
        lines.append(f"{row}  {_prompt(request.prompt)}")
    lines += [
        "",
        f"median PSNR      {_db_unit(summary.median_psnr_db)}   gate >= {gate.median_psnr_db:g} dB",
        f"worst PSNR       {_db_unit(summary.worst_psnr_db)}   gate >= {gate.worst_psnr_db:g} dB",
        f"max difference   {summary.max_diff:>10.0f} /255",
        f"mean difference  {summary.mean_diff:>10.3f} /255",
        f"median SSIM      {_ssim(summary.median_ssim):>10}      (pip install 'sdrt[quality]' for SSIM)"
        if summary.median_ssim is None else f"median SSIM      {_ssim(summary.median_ssim):>10}",
    ]
    if adherence:
        lines.append(f"adherence        {summary.adherence_candidate:>10.3f}      exact {summary.adherence_exact:.3f}; "
                     f"gate: at most {gate.adherence_points:g} lower")
    lines += ["", outcome.line(settings["candidate"]["mode"])]
    return "\n".join(lines)


def yardstick_json(requests: Sequence["GenerationRequest"], summary: QualitySummary, outcome: Verdict, mode: str,
                   gate: Gate = GATE) -> dict[str, Any]:
    """The gate, the summary, the verdict and the images: `sdrt quality`'s document and `sdrt bench --quality`'s
    "quality" field."""
    figures = summary.as_dict()
    images = figures.pop("images")
    return {
        "gate": gate.as_dict(),
        "summary": figures,
        "verdict": {"passed": outcome.passed, "failures": list(outcome.failures), "line": outcome.line(mode)},
        "images": [{"prompt": r.prompt, "seed": r.seed, **image} for r, image in zip(requests, images)],
    }


def summary_line(summary: QualitySummary) -> str:
    """The figures on one line (the bench's quality row)."""
    ssim = "" if summary.median_ssim is None else f", median SSIM {summary.median_ssim:.4f}"
    adherence = "" if summary.adherence_exact is None else (
        f", adherence {summary.adherence_candidate:.3f} (exact {summary.adherence_exact:.3f})")
    psnr = (f"median PSNR {_db_unit(summary.median_psnr_db).strip()}, worst {_db_unit(summary.worst_psnr_db).strip()}"
            if not math.isinf(summary.worst_psnr_db) else "identical images")
    return (f"{psnr}, max difference {summary.max_diff:.0f}/255, mean {summary.mean_diff:.3f}/255"
            f"{ssim}{adherence}")


def to_json(settings: dict[str, Any], requests: Sequence["GenerationRequest"], summary: QualitySummary,
            outcome: Verdict, gate: Gate = GATE) -> dict[str, Any]:
    return {"schema": SCHEMA, "settings": settings, "machine": machine_facts(),
            **yardstick_json(requests, summary, outcome, settings["candidate"]["mode"], gate)}


def json_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()
