"""Click options shared by the commands that open a bundle for inference (generate, bench). The seed rules
they share with the HTTP server live in sdrt.runtime.seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

ENGINE_OPTIONS = (
    click.option("--backend", default="auto", show_default=True,
                 help="auto (best available: a GPU backend where one can run; on CPU the fastest of ort-cpu, "
                      "OpenVINO f32 and, on a CPU with native bf16, OpenVINO bf16 where it passes the quality "
                      "gate; measured once and cached), ort-cpu, openvino (pip install 'sdrt[openvino]'), trt "
                      "(sdrt build engines), ort-cuda or ort-trt."),
    click.option("--engines", "engines_dir", default=None, type=click.Path(path_type=Path),
                 help="TensorRT engine folder for --backend trt/auto (default: BUNDLE/engines)."),
    click.option("--precision", default=None, type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
                 help="Graph set to run (default: fp32 on CPU, fp16 on GPU; auto on a CPU with native bf16: bf16 "
                      "where it passes the quality gate and is faster); bf16: OpenVINO computes the fp32 graphs in "
                      "bfloat16 (faster, not exact; refused if it fails the quality gate, docs/quality.md); int8: "
                      "the UNet sdrt quantize added (ort-cpu, openvino; not exact, gated when made)."),
    click.option("--exact", "precision", flag_value="fp32",
                 help="Exact fp32 everywhere (same as --precision fp32): auto then never picks bf16 or int8."),
    click.option("--threads", default=0, show_default=True, type=int,
                 help="CPU threads per engine: 0 (ORT decides) or 1..4 per usable core."),
    click.option("--spin/--no-spin", default=None,
                 help="CPU: ORT threads spin-wait for work (fastest on idle dedicated cores) or sleep (faster "
                      "on a shared or busy CPU). Default: spin unless there are more threads than cores or "
                      "the load average is half the cores or more; the output says which and why."),
)


def engine_options(command: Callable) -> Callable:
    """Add --backend, --engines, --precision, --exact, --threads and --spin/--no-spin, in that order."""
    for option in reversed(ENGINE_OPTIONS):
        command = option(command)
    return command
