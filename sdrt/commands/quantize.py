"""`sdrt quantize`: add a gated int8 UNet to a bundle (docs/quantize.md)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--int8", "int8", is_flag=True, help="Add an int8 UNet (QDQ ONNX: ORT CPU and OpenVINO run it).")
@click.option("--calibration-prompts", type=click.Path(path_type=Path), default=None,
              help="Text file, one prompt a line (default: a built-in list for the model).")
@click.option("--calibration-steps", default=20, show_default=True, type=click.IntRange(1, 200),
              help="Sampling steps per recorded trajectory.")
@click.option("--method", type=click.Choice(["auto", "ort"]), default="auto", show_default=True,
              help="Quantizer: ort (ONNX Runtime static QDQ); auto = the measured best (ort).")
@click.option("--threads", default=0, show_default=True, type=int, help="CPU threads per engine (0: ORT decides).")
@click.option("--force", is_flag=True, help="Quantize again when the bundle already has an int8 UNet.")
def quantize(bundle: Path, int8: bool, calibration_prompts: Path | None, calibration_steps: int, method: str,
             threads: int, force: bool) -> None:
    """Quantize BUNDLE's UNet to int8, calibrated on its own sampler trajectories; kept only if it passes the
    quality gate against exact fp32 (nothing is written otherwise)."""
    from ..errors import UserError
    from ..quantize.calibration import read_prompts
    from ..quantize.run import QuantizeOptions, quantize_bundle

    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        raise UserError(f"sdrt quantize needs onnx and onnxruntime ({exc}): pip install 'sdrt[quantize]'") from None
    if not int8:
        raise UserError("say what to quantize: sdrt quantize BUNDLE --int8")
    if not bundle.exists():
        raise UserError(f"bundle {bundle} does not exist: pass the folder sdrt export wrote")
    prompts = read_prompts(calibration_prompts) if calibration_prompts else None
    options = QuantizeOptions(prompts=prompts, calibration_steps=calibration_steps, method=method, threads=threads,
                              force=force)
    report = quantize_bundle(bundle, options, say=click.echo)
    spec = report.manifest.components["int8"]["unet"]
    click.echo(f"int8 UNet added: {bundle / spec.file} (passed the quality gate on "
               f"{', '.join(f.backend for f in report.figures)}); run it with --precision int8")
