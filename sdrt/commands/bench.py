"""`sdrt bench`: warm-up, then timed runs of one txt2img request; median and p90 per stage and per
denoising step (engine vs host overhead), images/s, peak RSS and VRAM; a table, JSON and a PNG chart."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from ..runtime.seeds import resolve_seed
from .options import engine_options

_SIZE = re.compile(r"^(\d+)[xX](\d+)$")
QUALITY_PROMPTS = 4  # bench --quality: enough for a median and a worst image, a fraction of `sdrt quality`'s 8


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """"WIDTHxHEIGHT" -> (width, height); None keeps the bundle's default size."""
    from ..errors import UserError

    if text is None:
        return None, None
    match = _SIZE.match(text.strip())
    if not match:
        raise UserError(f"--size {text!r} is not WIDTHxHEIGHT: write it like 512x512")
    return int(match.group(1)), int(match.group(2))


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@engine_options
@click.option("--steps", default=20, show_default=True, type=int, help="Sampling steps.")
@click.option("--sampler", default="euler", show_default=True, help="Sampler name (see `sdrt samplers`).")
@click.option("--cfg", default=7.5, show_default=True, type=float, help="Guidance scale; <= 1 disables CFG.")
@click.option("--batch", default=1, show_default=True, type=int, help="Images per run.")
@click.option("--size", default=None, help="WIDTHxHEIGHT in pixels (default: the bundle's default size).")
@click.option("--runs", default=5, show_default=True, type=int, help="Timed runs.")
@click.option("--warmup", default=1, show_default=True, type=int, help="Untimed runs first.")
@click.option("--prompt", default="a photograph of an astronaut riding a horse", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int, help="0..2**64-1, or -1 for a random one.")
@click.option("--json", "json_path", default=None, type=click.Path(path_type=Path), help="Write the results here.")
@click.option("--chart", "chart_path", default=None, type=click.Path(path_type=Path),
              help="Write a PNG chart here (needs matplotlib: pip install 'sdrt[bench]').")
@click.option("--quality", "with_quality", is_flag=True,
              help="Then measure the benchmarked mode against exact fp32 on ort-cpu (sdrt quality's figures and "
                   f"gate, on its first {QUALITY_PROMPTS} default prompts at the bench's size, steps, sampler "
                   "and cfg).")
@click.option("--quiet", is_flag=True, help="No per-run lines on stderr.")
def bench(bundle: Path, backend: str, engines_dir: Path | None, precision: str | None, steps: int, sampler: str,
          cfg: float, batch: int, size: str | None, runs: int, warmup: int, threads: int, spin: bool | None,
          prompt: str, seed: int, json_path: Path | None, chart_path: Path | None, with_quality: bool,
          quiet: bool) -> None:
    """Measure where the time of a generation with the model in BUNDLE goes."""
    from ..bench.chart import chart_png, require_matplotlib
    from ..bench.output import json_bytes, table
    from ..bench.session import run_benchmark
    from ..bench.timing import TimedPipeline
    from ..errors import UserError
    from ..manifest import write_atomic
    from ..runtime import GenerationRequest
    from ..runtime.cpu_policy import spin_for_this_machine
    from .output_files import check_outputs

    width, height = parse_size(size)
    spin_choice = spin_for_this_machine(spin, threads)
    seed = resolve_seed(seed)
    if runs < 1:
        raise UserError(f"--runs {runs} must be at least 1: the median needs one timed run")
    if warmup < 0:
        raise UserError(f"--warmup {warmup} must be 0 or more")
    if chart_path is not None:
        if chart_path.suffix.lower() != ".png":
            raise UserError(f"--chart {chart_path} must end in .png: the chart is a PNG image")
        require_matplotlib()
    check_outputs([path for path in (json_path, chart_path) if path is not None])

    pipe = TimedPipeline.load(str(bundle), backend=backend, precision=precision, threads=threads,
                              engines_dir=str(engines_dir) if engines_dir else None, spin=spin_choice.spin)
    request = GenerationRequest(prompt=prompt, steps=steps, sampler=sampler, cfg=cfg, seed=seed, batch=batch,
                                width=width, height=height)
    _, (height, width) = pipe.check(request)
    settings = {"bundle": str(bundle), "family": pipe.model.family, "precision": pipe.bundle.precision,
                "backend": backend, "backend_choice": pipe.backend_choice, "spin": spin_choice.spin,
                "spin_reason": spin_choice.reason, "steps": steps,
                "sampler": sampler, "schedule": request.schedule, "cfg": cfg, "batch": batch, "width": width,
                "height": height, "runs": runs, "warmup": warmup, "threads": threads, "prompt": prompt, "seed": seed}

    def on_run(kind: str, index: int, record) -> None:
        if not quiet:
            total = runs if kind == "run" else warmup
            click.echo(f"{kind} {index}/{total}: {record.end_to_end * 1e3:.1f} ms", err=True)

    try:
        report = run_benchmark(pipe, request, runs, warmup, settings, on_run)
        if with_quality:
            report.quality = measure_quality(pipe, str(bundle), request, (height, width), threads, spin_choice.spin,
                                             quiet)
    finally:
        pipe.close()
    click.echo(table(report))
    if json_path is not None:
        write_atomic(json_path, json_bytes(report))
        click.echo(f"wrote {json_path}")
    if chart_path is not None:
        write_atomic(chart_path, chart_png(report))
        click.echo(f"wrote {chart_path}")
    sys.stdout.flush()


def measure_quality(pipe, bundle: str, request, size: tuple[int, int], threads: int, spin: bool,
                    quiet: bool) -> dict:
    """The yardstick of the benchmarked pipeline against exact fp32 on ort-cpu (sdrt.quality), after the timed
    runs so it never disturbs them. A failed gate is reported, not an error: the bench measures."""
    from ..quality.gate import verdict
    from ..bench.quality_report import REFERENCE_BACKEND, mode_name, summary_line, yardstick_json
    from ..quality.runner import compare_pipelines
    from ..runtime.gate_requests import default_requests
    from ..runtime import Pipeline

    reference = Pipeline.load(bundle, backend=REFERENCE_BACKEND, precision="fp32", threads=threads, spin=spin)
    requests = default_requests(reference, steps=request.steps, size=size,
                                prompt_count=QUALITY_PROMPTS, sampler=request.sampler, cfg=request.cfg,
                                schedule=request.schedule)
    progress = None if quiet else (lambda n, total: click.echo(f"quality {n}/{total} compared", err=True))
    summary = compare_pipelines(reference, pipe, requests, progress=progress)
    outcome = verdict(summary)
    return {"reference": f"fp32 on {REFERENCE_BACKEND}", "summary_line": summary_line(summary),
            **yardstick_json(requests, summary, outcome, mode_name(pipe))}
