"""Click options shared by the commands that open a bundle for inference (generate, bench), and the checks
of the values they share (seed, threads, spinning)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Callable

import click

MAX_SEED = 2**64 - 1  # 64-bit seeds, as AUTOMATIC1111 and torch take them, so a PNG's seed re-makes it there too
RANDOM_SEED = -1  # what AUTOMATIC1111 users type for "random"

ENGINE_OPTIONS = (
    click.option("--backend", default="ort-cpu", show_default=True,
                 help="ort-cpu, openvino (OpenVINO on CPU: pip install 'sdrt[openvino]'), auto (best available; "
                      "on CPU the faster of ort-cpu and openvino, measured once), trt (sdrt build engines), "
                      "ort-cuda or ort-trt."),
    click.option("--engines", "engines_dir", default=None, type=click.Path(path_type=Path),
                 help="TensorRT engine folder for --backend trt/auto (default: BUNDLE/engines)."),
    click.option("--precision", default=None, type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
                 help="Graph set to run (default: fp32 on CPU, fp16 on GPU); bf16: --backend openvino computes "
                      "the fp32 graphs in bfloat16 (faster, not exact; refused if it strays past its gate); "
                      "int8: the UNet sdrt quantize added (ort-cpu, openvino; not exact, gated when made)."),
    click.option("--threads", default=0, show_default=True, type=int,
                 help="CPU threads per engine: 0 (ORT decides) or 1..4 per usable core."),
    click.option("--spin/--no-spin", default=None,
                 help="CPU: ORT threads spin-wait for work (fastest on idle dedicated cores) or sleep (faster "
                      "on a shared or busy CPU). Default: spin unless there are more threads than cores or "
                      "the load average is half the cores or more; the output says which and why."),
)


def engine_options(command: Callable) -> Callable:
    """Add --backend, --engines, --precision, --threads and --spin/--no-spin, in that order."""
    for option in reversed(ENGINE_OPTIONS):
        command = option(command)
    return command


def resolve_seed(seed: int | None) -> int:
    """None or -1: a random seed (printed, and recorded in the PNGs like any other); else 0..2**64-1."""
    from ..errors import UserError

    if seed is None or seed == RANDOM_SEED:
        return secrets.randbelow(2**32)
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed} is out of range: use 0..{MAX_SEED}, or -1 for a random seed")
    return seed
