"""The benchmark's stdout table and JSON document.

JSON keys (schema "sdrt-bench/1"): schema, settings {bundle, family, precision, backend, backend_choice, spin,
spin_reason (why ORT's threads spun or not: "--no-spin", "load 3.2 on 2 cores", ...), providers, steps,
sampler, schedule, cfg, batch, width, height, runs, warmup, threads, prompt, seed},
machine {cpu_count, load_average, platform, python, onnxruntime}, stages {text_encoding, prepare_latents,
denoising, unet_engine, host_overhead, vae_decode, other, end_to_end: {median_s, p90_s}}, per_step {engine,
host_overhead: {median_s, p90_s}}, timeline [{step, engine_median_s, engine_p90_s, host_median_s,
host_p90_s}], images_per_s, peak_rss_bytes, peak_vram_bytes (null without a GPU), peak_vram_source,
runs [per-run seconds], quality (null without --quality; else the benchmarked mode against exact fp32 on ort-cpu:
{reference, summary_line, gate, summary, verdict, images}, as in `sdrt quality`'s document, docs/quality.md).
Per-stage figures are per run (the whole batch); per_step and timeline are per denoising step.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

from ..runtime.cpu_policy import SpinChoice
from .stats import Report, Spread

SCHEMA = "sdrt-bench/1"

_ROWS = (  # (label, stage key)
    ("text encoding", "text_encoding"),
    ("prepare latents", "prepare_latents"),
    ("denoising loop", "denoising"),
    ("  UNet engine", "unet_engine"),
    ("  host overhead", "host_overhead"),
    ("VAE decode", "vae_decode"),
    ("other", "other"),
    ("end-to-end", "end_to_end"),
)


def format_seconds(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "n/a"
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def format_bytes(count: int | None, why_none: str = "n/a") -> str:
    return why_none if count is None else f"{count / 2**20:.1f} MiB"


def machine_facts() -> dict[str, Any]:
    try:
        import onnxruntime  # noqa: PLC0415

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "load_average": list(load) if load else None,
            "platform": platform.platform(), "python": sys.version.split()[0], "onnxruntime": ort_version}


def table(report: Report) -> str:
    s = report.settings
    providers = sorted({p[0] for p in s.get("providers", {}).values() if p})
    lines = [
        f"sdrt bench {s['bundle']} ({s['family']}, {s['precision']}) on {s['backend']} "
        f"[{', '.join(providers)}]",
        f"{s['steps']} steps {s['sampler']}, cfg {s['cfg']}, batch {s['batch']}, {s['width']}x{s['height']}; "
        f"{s['runs']} timed run(s) after {s['warmup']} warm-up",
        f"threads {s['threads'] or 'auto (ORT)'}, {SpinChoice(s['spin'], s['spin_reason'])}",
        "",
        f"{'stage':<22}{'median':>12}{'p90':>12}",
    ]

    def row(label: str, spread: Spread) -> None:
        lines.append(f"{label:<22}{format_seconds(spread.median):>12}{format_seconds(spread.p90):>12}")

    for label, key in _ROWS:
        row(label, report.stages[key])
    lines.append("")
    lines.append(f"{'per denoising step':<22}{'median':>12}{'p90':>12}")
    row("  UNet engine", report.step_engine)
    row("  host overhead", report.step_host)
    calls = report.runs[0].unet_calls if report.runs else 0
    lines += [
        "",
        f"UNet calls per run      {calls}",
        f"images/s                {report.images_per_s:.3f}",
        f"peak RSS                {format_bytes(report.peak_rss_bytes)}",
        f"peak VRAM               {format_bytes(report.peak_vram_bytes, report.peak_vram_source)}",
    ]
    if report.quality is not None:
        q = report.quality
        lines += ["", f"quality vs exact ({q['reference']}), {len(q['images'])} image(s): {q['summary_line']}",
                  q["verdict"]["line"]]
    return "\n".join(lines)


def to_json(report: Report) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "settings": report.settings,
        "machine": machine_facts(),
        "stages": {name: spread.to_json() for name, spread in report.stages.items()},
        "per_step": {"engine": report.step_engine.to_json(), "host_overhead": report.step_host.to_json()},
        "timeline": [{"step": i, "engine_median_s": e.median, "engine_p90_s": e.p90, "host_median_s": h.median,
                      "host_p90_s": h.p90} for i, (e, h) in enumerate(report.timeline)],
        "images_per_s": report.images_per_s,
        "peak_rss_bytes": report.peak_rss_bytes,
        "peak_vram_bytes": report.peak_vram_bytes,
        "peak_vram_source": report.peak_vram_source,
        "runs": [r.to_json() for r in report.runs],
        "quality": report.quality,
    }


def json_bytes(report: Report) -> bytes:
    return (json.dumps(to_json(report), indent=2) + "\n").encode()
