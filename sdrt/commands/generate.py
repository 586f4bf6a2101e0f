"""`sdrt generate`: txt2img, img2img (--init-image) and inpainting (--init-image --mask) from a bundle.

Everything the user typed is checked before the first engine runs; files are written only at the end, each
atomically, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import click

SCHEDULES = ("normal", "karras", "exponential", "ays")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("prompt")
@click.option("--negative", default=None, help="Negative prompt (what to steer away from).")
@click.option("--steps", default=20, show_default=True, type=int, help="Sampling steps.")
@click.option("--sampler", default="euler", show_default=True, help="Sampler name (see `sdrt samplers`).")
@click.option("--schedule", default="normal", show_default=True, help=f"Sigma schedule: {', '.join(SCHEDULES)}.")
@click.option("--cfg", default=7.5, show_default=True, type=float, help="Guidance scale; <= 1 disables CFG.")
@click.option("--guidance-rescale", default=0.0, show_default=True, type=float,
              help="Rescale guided output towards the conditional std (0.7 for zero-SNR models).")
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="Sampling temperature: < 1 sharper, > 1 more varied.")
@click.option("--temperature-method", default="tsr", show_default=True, type=click.Choice(["tsr", "cns"]),
              help="Temporal Score Rescaling, or Constant Noise Scaling (stochastic samplers).")
@click.option("--seed", default=None, type=int, help="Seed of the first image (image i uses seed + i); random if omitted.")
@click.option("--batch", default=1, show_default=True, type=int, help="Images per run.")
@click.option("--width", default=None, type=int, help="Width in pixels (default: init image or bundle default).")
@click.option("--height", default=None, type=int, help="Height in pixels (default: init image or bundle default).")
@click.option("--init-image", default=None, type=click.Path(path_type=Path), help="Image for img2img / inpainting.")
@click.option("--strength", default=None, type=float,
              help="How much of the init image to repaint, (0, 1] (default 0.8 img2img, 1.0 inpaint).")
@click.option("--mask", default=None, type=click.Path(path_type=Path), help="Inpainting mask: white = repaint.")
@click.option("--backend", default="ort-cpu", show_default=True, help="ort-cpu, ort-cuda or ort-trt.")
@click.option("--precision", default=None, type=click.Choice(["fp32", "fp16"]),
              help="Graph set to run (default: fp32 on CPU, fp16 on GPU).")
@click.option("--threads", default=0, show_default=True, type=int, help="CPU threads per engine (0: ORT decides).")
@click.option("--verify", is_flag=True, help="Check every bundle file's sha256 before running.")
@click.option("-o", "--output", default=None, type=click.Path(path_type=Path),
              help="PNG path (batch > 1: NAME-SEED.png per image). Default: sdrt-SEED.png.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(bundle: Path, prompt: str, negative: str | None, steps: int, sampler: str, schedule: str, cfg: float,
             guidance_rescale: float, temperature: float, temperature_method: str, seed: int | None, batch: int,
             width: int | None, height: int | None, init_image: Path | None, strength: float | None,
             mask: Path | None, backend: str, precision: str | None, threads: int, verify: bool,
             output: Path | None, quiet: bool) -> None:
    """Generate images from PROMPT with the exported model in BUNDLE."""
    from ..errors import UserError
    from ..runtime import GenerationRequest, Pipeline, open_image, save_png

    if output is not None and output.suffix.lower() != ".png":
        raise UserError(f"output {output} must end in .png: sdrt writes PNG files with their settings inside")
    if seed is None:
        seed = secrets.randbelow(2**32)
    request = GenerationRequest(
        prompt=prompt, negative=negative, steps=steps, sampler=sampler, schedule=schedule, cfg=cfg,
        guidance_rescale=guidance_rescale, temperature=temperature, temperature_method=temperature_method,
        seed=seed, batch=batch, width=width, height=height, strength=strength,
        init_image=open_image(init_image, "init image") if init_image is not None else None,
        mask=open_image(mask, "mask") if mask is not None else None,
    )
    pipe = Pipeline.load(str(bundle), backend=backend, precision=precision, threads=threads, verify=verify)
    paths = output_paths(output, request.seed, batch)
    pipe.check(request)  # every user error before the progress bar starts

    if quiet or not sys.stderr.isatty():
        result = pipe.generate(request)
    else:
        with click.progressbar(length=steps, label="sampling", file=sys.stderr) as bar:
            state = {"done": 0}

            def progress(done: int, total: int) -> None:
                bar.length = total
                bar.update(done - state["done"])
                state["done"] = done

            result = pipe.generate(request, progress=progress)

    for path, pixels, parameters in zip(paths, result.images, result.parameters):
        save_png(path, pixels, parameters)
    t = result.timings
    providers = sorted({p[0] for p in pipe.providers.values()})
    click.echo(f"wrote {', '.join(str(p) for p in paths)} (seed {request.seed}) in {t.total:.2f} s on "
               f"{', '.join(providers)}; UNet {t.unet / max(t.unet_calls, 1) * 1e3:.1f} ms/call, host overhead "
               f"{t.host_overhead_per_step * 1e3:.2f} ms/step")


def output_paths(output: Path | None, seed: int, batch: int) -> list[Path]:
    if output is None:
        return [Path(f"sdrt-{seed + i}.png") for i in range(batch)]
    if batch == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{seed + i}{output.suffix}") for i in range(batch)]
