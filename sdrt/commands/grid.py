"""`sdrt grid`: an X/Y/Z plot of generation settings, as AUTOMATIC1111's, with per-cell seconds and (on the
built-in model) prompt adherence.

The base settings are `sdrt generate`'s own options (the same click objects, so an option added there is
here too); every cell is checked before the first engine runs, and the pictures and the JSON are written
at the end, all or none.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .generate import generate
from ..runtime.seeds import resolve_seed

# generate's options that do not apply to a grid (a cell holds one image; outputs are the grid's own)
NOT_SHARED = {"output", "batch", "quiet"}
AXIS_HELP = ("KEY=V1,V2,... e.g. steps=10,20,30, sampler=euler,ddim, cfg=3-9 (+3), size=64x64,96x64, "
             "prompt_sr=red,green, temperature_method=tsr,cns, eta=0,1, or any request field (docs/grids.md).")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("prompt")
@click.option("--x", "x_axis", default=None, metavar="KEY=V1,V2,...", help=f"Columns: {AXIS_HELP}")
@click.option("--y", "y_axis", default=None, metavar="KEY=V1,V2,...", help="Rows (same form as --x).")
@click.option("--z", "z_axis", default=None, metavar="KEY=V1,V2,...", help="One picture per value (same form).")
@click.option("-o", "--output", default=Path("sdrt-grid.png"), show_default=True, type=click.Path(path_type=Path),
              help="Grid PNG; with a Z axis NAME-1.png, NAME-2.png, ... one per Z value.")
@click.option("--json", "json_path", default=None, type=click.Path(path_type=Path),
              help="Cell settings, seconds and files (default: the output's name with .json).")
@click.option("--score", is_flag=True,
              help="Write each cell's prompt adherence under it (built-in model; always in the JSON there).")
@click.option("--zoom", default=None, type=click.IntRange(1, 16),
              help="Show images enlarged N times (default: enough for 128-pixel cells).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="UNet rows per run: cells of one shape share runs up to this (1 or 2: each cell alone).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def grid(bundle: Path, prompt: str, x_axis: str | None, y_axis: str | None, z_axis: str | None, output: Path,
         json_path: Path | None, score: bool, zoom: int | None, max_batch: int, quiet: bool, **options) -> None:
    """Draw an X/Y/Z grid of PROMPT over settings such as steps, sampler, cfg, temperature, seed and size."""
    from ..errors import UserError
    from ..runtime.images import png_bytes
    from ..tools.grid import grid_record, make_grid
    from ..tools.grid_axes import parse_axis
    from ..tools.grid_plan import GridAxes
    from .output_files import check_outputs, write_all

    if output.suffix.lower() != ".png":
        raise UserError(f"output {output} must end in .png: the grid is a PNG with its settings inside")
    if not (x_axis or y_axis or z_axis):
        raise UserError("a grid needs at least one axis: add e.g. --x steps=10,20,30")
    base = base_request(prompt, options)
    axes = GridAxes(*(parse_axis(a, base) if a else GridAxes().x for a in (x_axis, y_axis, z_axis)))
    axes.check()  # the cell count, before any output path or cell is made
    pictures = len(axes.z)
    paths = [output] if pictures == 1 else [output.with_name(f"{output.stem}-{i + 1}{output.suffix}")
                                            for i in range(pictures)]
    json_path = json_path or output.with_suffix(".json")
    check_outputs([*paths, json_path])
    pipe = load_pipeline(bundle, options)
    started = time.perf_counter()

    def done(finished: int, total: int) -> None:
        if not quiet:
            click.echo(f"cell {finished}/{total} done ({time.perf_counter() - started:.1f} s)", err=True)

    try:
        result = make_grid(pipe, base, axes, max_rows=max_batch, score=True if score else None,
                           show_scores=score, zoom=zoom, done=done)
    finally:
        pipe.close()
    record = {"bundle": str(bundle), "prompt": base.prompt, "negative": base.negative,
              **grid_record(result, [str(p) for p in paths])}
    files = [(path, png_bytes(picture, parameters))
             for path, picture, parameters in zip(paths, result.pictures, result.parameters)]
    write_all([*files, (json_path, (json.dumps(record, indent=1) + "\n").encode())])
    batches = len({r.batch for r in result.cells})
    summary = f"wrote {', '.join(map(str, paths))} and {json_path}: {len(result.cells)} cells in {batches} " \
              f"batch{'es' if batches != 1 else ''}, {time.perf_counter() - started:.2f} s"
    scored = [r.score for r in result.cells if r.score is not None]
    if scored:
        summary += f"; adherence {sum(bool(s['all']) for s in scored)}/{len(scored)} cells match the prompt"
    click.echo(summary)


def load_pipeline(bundle: Path, options: dict):
    """The Pipeline for generate's engine options (--backend, --precision, --threads, --spin, --verify, ...)."""
    from ..runtime import Pipeline
    from ..runtime.cpu_policy import spin_for_this_machine

    spin_choice = spin_for_this_machine(options["spin"], options["threads"])
    engines = options["engines_dir"]
    return Pipeline.load(str(bundle), backend=options["backend"], precision=options["precision"],
                         threads=options["threads"], verify=options["verify"],
                         engines_dir=str(engines) if engines else None, spin=spin_choice.spin)


def base_request(prompt: str, options: dict):
    """The GenerationRequest of generate's options: every option named like a request field passes through
    (so a field and option added later, e.g. clip_skip, need nothing here)."""
    import dataclasses

    from ..runtime import GenerationRequest, open_image
    from .generate import parse_options

    fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    values = {k: v for k, v in options.items() if k in fields}
    values["sampler_options"] = parse_options(options.get("sampler_options", ()))
    values["seed"] = resolve_seed(options.get("seed"))
    values["prompt_weighting"] = not options.get("no_prompt_weighting", False)  # a negated flag, not a field
    for name, what in (("init_image", "init image"), ("mask", "mask")):
        if values.get(name) is not None:
            values[name] = open_image(values[name], what)
    return GenerationRequest(prompt=prompt, **values)


# generate's own options after the grid's (help lists the grid's first); the arguments stay the grid's
grid.params.extend(p for p in generate.params
                   if isinstance(p, click.Option) and p.name not in NOT_SHARED
                   and p.name not in {q.name for q in grid.params})
