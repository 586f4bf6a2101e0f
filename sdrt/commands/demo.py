"""`sdrt demo`: the built-in tiny text-to-image model, exported and run end to end, into a labelled PNG grid.
torch is imported only inside the command body (the export needs it)."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.command()
@click.option("--out", "out", default="sdrt-demo", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the grid (demo-grid.png) and the single images.")
@click.option("--steps", default=20, show_default=True, type=int, help="Sampling steps.")
@click.option("--sampler", default="euler", show_default=True, help="Sampler name (see `sdrt samplers`).")
@click.option("--images", "images_per_prompt", default=4, show_default=True, type=int, help="Images per prompt.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of each prompt's first image.")
@click.option("--prompt", "prompts", multiple=True,
              help='Prompt(s) instead of the built-in list, e.g. "a red circle on a blue background".')
def demo(out: Path, steps: int, sampler: str, images_per_prompt: int, seed: int, prompts: tuple[str, ...]) -> None:
    """Export the built-in tiny model (trained on coloured shapes) and draw a grid of prompts with it."""
    from ..errors import UserError
    from ..export.quiet import quiet_third_party
    from ..tools.demo import DEMO_PROMPTS, DemoSettings, run_demo

    if images_per_prompt < 1:
        raise UserError(f"--images must be at least 1, got {images_per_prompt}")
    started = time.monotonic()

    def say(message: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.1f}s] {message}", err=True)

    settings = DemoSettings(prompts=prompts or DEMO_PROMPTS, images_per_prompt=images_per_prompt, steps=steps,
                            sampler=sampler, seed=seed)
    with quiet_third_party():
        files = run_demo(out, settings, say=say)
    click.echo(f"wrote {len(files.images) + 1} files to {out.absolute()}:")
    for path, prompt, seed in files.images:
        click.echo(f"  {path.absolute()}  ({prompt!r}, seed {seed})")
    click.echo(f"  {files.grid.absolute()}  (the labelled grid of all of them)")
    click.echo(f"cached for the next run (delete to free the space): the exported bundle {files.bundle.absolute()} "
               f"and the model folder it came from {files.model.absolute()}")
