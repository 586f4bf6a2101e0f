"""Click options shared by the commands that open a bundle for inference (generate, bench)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

ENGINE_OPTIONS = (
    click.option("--backend", default="ort-cpu", show_default=True,
                 help="ort-cpu, auto (best available), trt (sdrt build engines), ort-cuda or ort-trt."),
    click.option("--engines", "engines_dir", default=None, type=click.Path(path_type=Path),
                 help="TensorRT engine folder for --backend trt/auto (default: BUNDLE/engines)."),
    click.option("--precision", default=None, type=click.Choice(["fp32", "fp16"]),
                 help="Graph set to run (default: fp32 on CPU, fp16 on GPU)."),
    click.option("--threads", default=0, show_default=True, type=int,
                 help="CPU threads per engine (0: ORT decides)."),
    click.option("--no-spin", is_flag=True,
                 help="CPU: ORT threads sleep instead of spin-waiting (faster on a shared or busy CPU)."),
)


def engine_options(command: Callable) -> Callable:
    """Add --backend, --engines, --precision, --threads and --no-spin, in that order."""
    for option in reversed(ENGINE_OPTIONS):
        command = option(command)
    return command
