"""`sdrt export` (checkpoint -> verified ONNX bundle) and `sdrt tiny-model` (a tiny random-weight checkpoint
to try the toolchain without downloading one). torch is imported only inside the command bodies."""

from __future__ import annotations

import time
from typing import Callable

import click

from ..errors import UserError

PRECISION_CHOICES = {"fp32": ("fp32",), "fp16": ("fp16",), "both": ("fp32", "fp16")}
COMPONENT_NAMES = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")
TINY_KIND_NAMES = ("sd1", "sd2v", "sdxl", "sd1_inpaint", "sd1_controlnet", "sdxl_controlnet")


def _progress() -> Callable[[str], None]:
    started = time.monotonic()

    def say(message: str) -> None:
        click.echo(f"[{time.monotonic() - started:7.1f}s] {message}", err=True)

    return say


def _parse_components(values: tuple[str, ...]) -> list[str] | None:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPONENT_NAMES]
    if unknown:
        raise UserError(f"unknown component {', '.join(unknown)}: choose from {', '.join(COMPONENT_NAMES)}")
    return names or None


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--precision", type=click.Choice(sorted(PRECISION_CHOICES)), default="both", show_default=True,
              help="fp32 (CPU), fp16 (mixed precision for TensorRT 11 / ORT CUDA) or both.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17 or newer).")
@click.option("--components", multiple=True, metavar="NAMES",
              help=f"Comma-separated subset of {', '.join(COMPONENT_NAMES)} (default: all the model has).")
@click.option("--fp32-vae/--fp16-vae", default=None,
              help="Keep the VAE fp32 in the fp16 set (default: when the VAE config sets force_upcast, as SDXL).")
@click.option("--cleanup", type=click.Choice(["onnxslim", "polygraphy", "none"]), default="onnxslim",
              show_default=True, help="Graph simplification after tracing.")
@click.option("--fuse/--no-fuse", default=None,
              help="Attention as ONNX Runtime's MultiHeadAttention in the fp32 (CPU) graphs. Default: time the "
                   "fused and the unfused graph on ONNX Runtime CPU (1 warm-up + 3 calls each; up to 15 when "
                   "short) and keep the faster; --fuse always fuses, --no-fuse never (standard ONNX, for TensorRT "
                   "fp32 builds). fp16 graphs stay standard ONNX.")
@click.option("--config", type=click.Path(path_type=str), default=None,
              help="Diffusers config folder for a single-file checkpoint of a non-standard architecture (default: "
                   "the SD 1.5 / SD 2.1 / SDXL base configs sdrt ships; nothing is downloaded).")
@click.option("--prediction-type", type=click.Choice(["epsilon", "v_prediction"]), default=None,
              help="Override the prediction type (SD 2.x v-models cannot always be told from their keys).")
@click.option("--vae", type=click.Path(path_type=str), default=None, metavar="FILE",
              help="A VAE .safetensors (LDM or diffusers layout) replacing the checkpoint's VAE.")
@click.option("--embedding", "embeddings", multiple=True, metavar="NAME=FILE",
              help="A textual-inversion .safetensors embedding, used in prompts as NAME (repeatable).")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
              help="A LoRA .safetensors (kohya or diffusers/PEFT keys) fused into the weights at SCALE "
                   "(default 1; repeatable). See docs/lora.md.")
@click.option("--controlnet", "controlnets", multiple=True, metavar="DIR",
              help="A diffusers ControlNetModel folder exported beside the model, named after the folder "
                   "(repeatable). See docs/controlnet.md.")
@click.option("--min-size", type=int, default=None, metavar="PIXELS",
              help="Smallest image side the bundle accepts (a multiple of the VAE scale factor, 8 for SD; "
                   "default: derived from the UNet's sample size, e.g. 128 for SD 1.5).")
@click.option("--max-size", type=int, default=None, metavar="PIXELS",
              help="Largest image side the bundle accepts (default: twice the UNet's native size, e.g. 1024 "
                   "for SD 1.5). The graphs are dynamic; the range bounds requests and TensorRT profiles.")
@click.option("--overwrite", is_flag=True,
              help="Replace OUT if it is an sdrt bundle (only once the new bundle passed; never another folder).")
def export(model: str, out: str, precision: str, opset: int, components: tuple[str, ...], fp32_vae: bool | None,
           cleanup: str, fuse: bool | None, config: str | None, prediction_type: str | None, vae: str | None,
           embeddings: tuple[str, ...], loras: tuple[str, ...], controlnets: tuple[str, ...], min_size: int | None,
           max_size: int | None, overwrite: bool) -> None:
    """Export MODEL (a single-file .safetensors checkpoint or a diffusers folder) to the ONNX bundle folder
    OUT, checking every graph against torch on ONNX Runtime CPU."""
    from pathlib import Path

    from ..export.bundle import ExportOptions, export_bundle
    from ..export.embeddings import parse_embedding_options
    from ..export.lora_fusion import parse_lora_options
    from ..export.quiet import quiet_third_party

    options = ExportOptions(precisions=PRECISION_CHOICES[precision], opset=opset,
                            components=_parse_components(components), fp32_vae=fp32_vae, cleanup=cleanup, fuse=fuse,
                            config=Path(config) if config else None, overwrite=overwrite, min_size=min_size,
                            max_size=max_size, prediction_type=prediction_type,
                            vae=Path(vae) if vae else None, embeddings=parse_embedding_options(embeddings),
                            loras=parse_lora_options(loras), controlnets=[Path(c) for c in controlnets])
    with quiet_third_party():
        manifest = export_bundle(model, out, options, progress=_progress())
    for prec, comps in manifest.components.items():
        for name, spec in comps.items():
            worst = spec.accuracy.get("worst", {})
            click.echo(f"{prec:5s} {name:15s} {spec.file:28s} rel {worst.get('rel', float('nan')):.1e} "
                       f"cosine {worst.get('cosine', float('nan')):.6f}")


@click.command("tiny-model")
@click.argument("out", type=click.Path(path_type=str))
@click.option("--kind", type=click.Choice(TINY_KIND_NAMES), default="sd1", show_default=True,
              help="sd1 (PNDM, epsilon), sd2v (v-prediction), sdxl (two text encoders), sd1_inpaint (9-ch UNet); "
                   "sd1_controlnet / sdxl_controlnet: a ControlNet for the tiny sd1 / sdxl model (--controlnet).")
@click.option("--seed", type=int, default=0, show_default=True)
def tiny_model(out: str, kind: str, seed: int) -> None:
    """Write a tiny random-weight Stable Diffusion checkpoint (diffusers folder) to OUT, for trying
    `sdrt export` and the runtime without a real model. Its images are noise."""
    from pathlib import Path

    from ..export.quiet import quiet_third_party
    from ..export.tiny_models import build_tiny_model

    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise UserError(f"output {out} exists and is not empty: choose a new folder")
    with quiet_third_party():
        path = build_tiny_model(kind, out, seed=seed)
    click.echo(f"tiny {kind} model written to {path}")
