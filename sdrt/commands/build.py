"""`sdrt build`: TensorRT engines for this machine's GPU from a bundle's fp16 ONNX graphs (the UNet from its
int8 / fp8 QDQ graph with --int8 / --fp8: sdrt.engines.quantized)."""

from __future__ import annotations

import time
from pathlib import Path

import click

PROFILE_HELP = (
    "WIDTHxHEIGHT, each side N, MIN-MAX or MIN-MAX@OPT (512x512, 512-1024x512-1024@768). "
    "Repeat for several optimization profiles; default: the model's default size."
)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--profile", "sizes", multiple=True, metavar="SIZE", help=PROFILE_HELP)
@click.option("--batch", default="1", show_default=True, help="Images per prompt: N, MIN-MAX or MIN-MAX@OPT.")
@click.option("--prompt-chunks", default="1", show_default=True,
              help="Prompt length in 77-token chunks (long prompts): N or MIN-MAX.")
@click.option("--cfg", type=click.Choice(["on", "off", "both"]), default="on", show_default=True,
              help="Classifier-free guidance: on doubles the UNet batch, both also allows guidance 1.")
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True)
@click.option("--components", default=None, help="Comma-separated components; default: all the bundle has.")
@click.option("--opt-level", type=int, default=3, show_default=True, help="TensorRT builder optimization level 0-5.")
@click.option("--workspace", type=float, default=None, metavar="GB", help="Cap on tactic scratch memory in GB.")
@click.option("--engines", "engines_dir", type=click.Path(path_type=Path), default=None,
              help="Engine cache folder; default: BUNDLE/engines.")
@click.option("--force", is_flag=True, help="Rebuild even when a matching engine exists.")
@click.option("--refittable", is_flag=True,
              help="Build refittable engines, so `--lora` adapters switch in without a rebuild (docs/lora.md).")
@click.option("--dry-run", is_flag=True, help="Print each component's profile shapes and stop (no GPU needed).")
@click.option("--int8", is_flag=True,
              help="UNet engine from the bundle's int8 QDQ graph (sdrt quantize --int8): its Q/DQ nodes set the "
                   "precision; the other components as --precision.")
@click.option("--fp8", is_flag=True,
              help="UNet engine in fp8 (e4m3) from the same calibration as --int8; GPUs of compute capability 8.9+.")
def build(
    bundle: Path, sizes: tuple[str, ...], batch: str, prompt_chunks: str, cfg: str, precision: str,
    components: str | None, opt_level: int, workspace: float | None, engines_dir: Path | None,
    force: bool, dry_run: bool, refittable: bool = False, int8: bool = False, fp8: bool = False,
) -> None:
    """Build TensorRT engines (fp16 by default) for BUNDLE on this GPU; matching engines are reused."""
    from ..engines.build_plan import plan_builds, run_builds
    from ..engines.builder import BuildOptions, build_engine
    from ..engines.profiles import AXIS_ROLES, format_shapes, parse_profile, pipeline_shapes
    from ..engines.quantized import (check_fp8_capable, quantization_choice, quantized_graphs, split_components,
                                     tensorrt_graphs)
    from ..backends.gpu_detect import NO_GPU, detect_target, nvidia_gpu_present
    from ..errors import UserError
    from ..manifest import CONTROLNET_PREFIX, Manifest

    quantization = quantization_choice(int8, fp8)
    if not bundle.exists():
        raise UserError(f"bundle {bundle} does not exist: pass the folder sdrt export wrote")
    if not dry_run and not nvidia_gpu_present():
        raise UserError(NO_GPU)  # first: no re-export or other fix below helps on a machine without a GPU
    manifest = Manifest.load(bundle)
    available = manifest.components.get(precision, {})
    names = [c.strip() for c in components.split(",") if c.strip()] if components else [
        c for c in AXIS_ROLES if c in available
    ] + sorted(c for c in available if c.startswith(CONTROLNET_PREFIX))  # ControlNets: the U-Net's profiles
    if not names:
        have = ", ".join(manifest.components) or "none"
        raise UserError(f"bundle {bundle} has no {precision} graphs (it has: {have}): "
                        f"re-export with sdrt export --precision {precision} (or both)")
    plain, quantized = split_components(names, quantization)
    graphs = quantized_graphs(manifest, bundle, quantization) if quantization else precision
    groups = [(plain, precision, precision), (quantized, quantization or precision, graphs)]  # names, key, graphs
    for group, _, graph_set in groups:
        for c in group:
            fused = manifest.component(c, graph_set).fusions  # BundleError naming what the bundle has
            if fused:
                fix = (f"re-export with sdrt export --no-fuse, then run sdrt quantize {bundle} --int8 again"
                       if c in quantized else "build --precision fp16, or re-export with sdrt export --no-fuse")
                raise UserError(f"bundle {bundle}'s {graph_set} {c} graph has ONNX Runtime CPU fusions "
                                f"({', '.join(fused)}), which TensorRT cannot parse: {fix}")
    options = BuildOptions(opt_level=opt_level, workspace_gb=workspace, refittable=refittable)
    height, width = manifest.model.default_size
    profiles = [parse_profile(s, manifest.model, batch, prompt_chunks, cfg) for s in (sizes or (f"{width}x{height}",))]
    manifest.verify_files(bundle)
    shapes = {c: s for group, _, graph_set in groups for c, s in
              pipeline_shapes(manifest, group, graph_set, profiles).items()}
    if dry_run:
        for c in names:
            tag = f" ({quantization}, from the bundle's {graphs} graph)" if c in quantized else ""
            for i, (user, s) in enumerate(zip(profiles, shapes[c])):
                click.echo(f"{c}{tag} profile {i} ({user}):\n{format_shapes(s)}")
        return
    target = detect_target()
    if quantization == "fp8":
        check_fp8_capable(target)
    root = engines_dir or bundle / "engines"
    click.echo(f"building for {target.describe()} into {root / target.dir_name}")
    started = time.perf_counter()
    planned = [p for group, key_precision, graph_set in groups if group for p in plan_builds(
        bundle, manifest, group, key_precision, profiles, root, target, force, options=options, graphs=graph_set)]
    with tensorrt_graphs(planned, bundle, manifest, graphs, root, click.echo) as planned:
        run_builds(planned, root, options, build_engine, click.echo, profiles)
    click.echo(f"done in {time.perf_counter() - started:.1f} s")
