"""`sdrt generate`: txt2img, img2img (--init-image) and inpainting (--init-image --mask) from a bundle.

Everything the user typed, and every output path, is checked before the first engine runs; the images are
written only at the end, all or none (sdrt.commands.output_files), so a failed run leaves nothing behind.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .control_options import control_options, control_specs
from ..runtime.seeds import resolve_seed
from .options import engine_options

SCHEDULES = ("normal", "karras", "exponential", "ays")
MAX_BATCH = 64  # images per `sdrt generate` run (the server caps a request with --max-images, default 8)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("prompt")
@click.option("--negative", default=None, help="Negative prompt (what to steer away from).")
@click.option("--steps", default=20, show_default=True, type=int, help="Sampling steps.")
@click.option("--sampler", default="euler", show_default=True, help="Sampler name (see `sdrt samplers`).")
@click.option("--schedule", default="normal", show_default=True, help=f"Sigma schedule: {', '.join(SCHEDULES)}.")
@click.option("--spacing", default=None, type=click.Choice(["leading", "trailing", "linspace"]),
              help="Timestep spacing (default: the model's scheduler config, else the sampler's).")
@click.option("--sampler-option", "sampler_options", multiple=True, metavar="KEY=VALUE",
              help="Sampler option, repeatable, e.g. eta=0.5 or s_noise=1.0 (`sdrt samplers` lists them).")
@click.option("--cfg", default=7.5, show_default=True, type=float, help="Guidance scale; <= 1 disables CFG.")
@click.option("--guidance-rescale", default=0.0, show_default=True, type=float,
              help="Rescale guided output towards the conditional std (0.7 for zero-SNR models).")
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="Sampling temperature: < 1 sharper, > 1 more varied.")
@click.option("--temperature-method", default="tsr", show_default=True, type=click.Choice(["tsr", "cns"]),
              help="Temporal Score Rescaling, or Constant Noise Scaling (stochastic samplers).")
@click.option("--clip-skip", default=1, show_default=True, type=int,
              help="Text-encoder layer to condition on, A1111 numbering: 1 = last, 2 = penultimate, ...")
@click.option("--no-prompt-weighting", "no_prompt_weighting", is_flag=True,
              help="Take the prompts literally: no (word:1.2) / [word] / BREAK syntax (brackets are text).")
@click.option("--seed", default=None, type=int,
              help="Seed of the first image, 0..2**64-1 (image i uses seed + i); random if omitted or -1.")
@click.option("--batch", default=1, show_default=True, type=int,
              help=f"Images per run, 1..{MAX_BATCH} (more: run again with another --seed).")
@click.option("--width", default=None, type=int, help="Width in pixels (default: init image or bundle default).")
@click.option("--height", default=None, type=int, help="Height in pixels (default: init image or bundle default).")
@click.option("--init-image", default=None, type=click.Path(path_type=Path), help="Image for img2img / inpainting.")
@click.option("--strength", default=None, type=float,
              help="How much of the init image to repaint, (0, 1] (default 0.8 img2img, 1.0 inpaint).")
@click.option("--mask", default=None, type=click.Path(path_type=Path), help="Inpainting mask: white = repaint.")
@click.option("--outpaint", default=None, metavar="LEFT,RIGHT,TOP,BOTTOM", callback=lambda c, p, v: _margins(v),
              help="Outpaint: extend --init-image by these pixels (rounded up to the size multiple; docs/outpaint.md).")
@click.option("--outpaint-fill", default="edge", show_default=True, type=click.Choice(["edge", "noise", "blur"]),
              help="What the new area starts as (matters at --strength < 1).")
@control_options
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
              help="LoRA adapter (.safetensors, kohya or diffusers/PEFT) applied at run time with strength SCALE "
                   "(default 1; repeatable). See docs/lora.md.")
@engine_options
@click.option("--verify", is_flag=True, help="Check every bundle file's sha256 before running.")
@click.option("-o", "--output", default=None, type=click.Path(path_type=Path),
              help="PNG path (batch > 1: NAME-SEED.png per image); missing folders are created. "
                   "Default: sdrt-SEED.png.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(bundle: Path, prompt: str, negative: str | None, steps: int, sampler: str, schedule: str,
             spacing: str | None, sampler_options: tuple[str, ...], cfg: float,
             guidance_rescale: float, temperature: float, temperature_method: str, clip_skip: int,
             no_prompt_weighting: bool, seed: int | None, batch: int,
             width: int | None, height: int | None, init_image: Path | None, strength: float | None,
             mask: Path | None, outpaint: tuple[int, int, int, int] | None, outpaint_fill: str,
             control_images: tuple[Path, ...], control_scales: tuple[float, ...], control_starts: tuple[float, ...],
             control_ends: tuple[float, ...], control_preprocess: tuple[str, ...], controlnets: tuple[str, ...],
             canny_low: int, canny_high: int, loras: tuple[str, ...], backend: str, engines_dir: Path | None,
             precision: str | None, threads: int,
             spin: bool | None, verify: bool, output: Path | None, quiet: bool) -> None:
    """Generate images from PROMPT with the exported model in BUNDLE.

    PROMPT and --negative may weight words in AUTOMATIC1111's syntax: (word) x1.1, ((word)) x1.21,
    (word:1.4), [word] /1.1, \\( for a literal bracket, BREAK to start a new 75-token window."""
    from ..errors import UserError
    from ..lora.options import parse_lora_options
    from ..runtime import GenerationRequest, Pipeline, open_image
    from ..runtime.cpu_policy import spin_for_this_machine
    from ..runtime.images import png_bytes
    from .output_files import check_outputs, output_paths, write_all

    if output is not None and output.suffix.lower() != ".png":
        raise UserError(f"output {output} must end in .png: sdrt writes PNG files with their settings inside")
    spin_choice = spin_for_this_machine(spin, threads)
    seed = resolve_seed(seed)
    check_batch(batch)
    paths = output_paths(output, seed, batch)
    check_outputs(paths)
    request = GenerationRequest(
        prompt=prompt, negative=negative, steps=steps, sampler=sampler, schedule=schedule, spacing=spacing,
        sampler_options=parse_options(sampler_options), cfg=cfg,
        guidance_rescale=guidance_rescale, temperature=temperature, temperature_method=temperature_method,
        clip_skip=clip_skip, prompt_weighting=not no_prompt_weighting,
        seed=seed, batch=batch, width=width, height=height, strength=strength,
        init_image=open_image(init_image, "init image") if init_image is not None else None,
        mask=open_image(mask, "mask") if mask is not None else None,
        outpaint=outpaint, outpaint_fill=outpaint_fill, loras=parse_lora_options(loras),
        controls=control_specs(control_images, control_scales, control_starts, control_ends, control_preprocess,
                               controlnets, canny_low, canny_high),
    )
    pipe = Pipeline.load(str(bundle), backend=backend, precision=precision, threads=threads, verify=verify,
                         engines_dir=str(engines_dir) if engines_dir else None, spin=spin_choice.spin,
                         refittable=bool(request.loras), sizes=[(height, width)] if height and width else ())
    try:
        pipe.check(request)  # every user error before anything is printed or computed
        click.echo("".join(f"note: {note}\n" for note in pipe.notes(request)), err=True, nl=False)
        if backend == "auto" and _given(click.get_current_context(), "backend"):
            click.echo(pipe.backend_choice, err=True)  # asked for auto: say what it chose and why (the default
            # keeps stderr for errors; its last line names the provider and the precision either way)
        result = run_with_progress(pipe, request, show=not quiet and sys.stderr.isatty())
    finally:
        pipe.close()

    write_all([(path, png_bytes(pixels, parameters))
               for path, pixels, parameters in zip(paths, result.images, result.parameters)])
    t = result.timings
    providers = sorted({p[0] for p in pipe.providers.values() if p}) or [pipe.backend_choice.split(":")[0]]
    click.echo(f"wrote {', '.join(str(p) for p in paths)} (seed {request.seed}) in {t.total:.2f} s on "
               f"{', '.join(providers)}; UNet {t.unet / max(t.unet_calls, 1) * 1e3:.1f} ms/call, host overhead "
               f"{t.host_overhead_per_step * 1e3:.2f} ms/step; precision {pipe.precision}; {spin_choice}")


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT


def _margins(text: str | None) -> tuple[int, int, int, int] | None:
    from ..runtime.outpaint import parse_margins

    return None if text is None else parse_margins(text)


def parse_options(items: tuple[str, ...]) -> dict[str, float]:
    from ..errors import UserError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            options[key.strip()] = float(value)
        except ValueError:
            raise UserError(f"sampler option {item!r} is not KEY=NUMBER: write e.g. --sampler-option eta=0.5") from None
    return options


def run_with_progress(pipe, request, show: bool):
    """Generate, with a progress bar on stderr when it is a terminal."""
    if not show:
        return pipe.generate(request)
    with click.progressbar(length=request.steps, label="sampling", file=sys.stderr) as bar:
        done_before, last_draw = 0, 0.0

        def progress(done: int, total: int) -> None:
            # redraw at most 10 times a second: a terminal write costs more than a fast step's host work
            nonlocal done_before, last_draw
            now = time.monotonic()
            if done < total and now - last_draw < 0.1:
                return
            bar.length = total
            bar.update(done - done_before)
            done_before, last_draw = done, now

        return pipe.generate(request, progress=progress)


def check_batch(batch: int) -> None:
    """Before anything is allocated (the output names, the noise, the UNet buffers): a batch of 10**8 would
    take gigabytes before the bundle is even opened."""
    from ..errors import UserError

    if not 1 <= batch <= MAX_BATCH:
        raise UserError(f"--batch {batch} is out of range: make 1..{MAX_BATCH} images per run (for more, run again "
                        f"with --seed set past the last image's seed)")
