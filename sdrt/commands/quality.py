"""`sdrt quality`: the yardstick. The same requests (prompts, seeds, so the same latents and noise) run in the
exact reference mode (fp32 on ONNX Runtime CPU) and in the candidate mode chosen by the options `sdrt generate`
takes (--backend, --precision, ...); per image and summarised: PSNR, max and mean pixel difference, SSIM, and
on the built-in model prompt adherence; then the gate's verdict (docs/quality.md).

Exit codes: 0 the candidate passed the gate, 1 it failed (a measured outcome: the figures are printed and the
JSON written), 2 bad input (one line, nothing run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import engine_options

EXIT_GATE_FAILED = 1
DIFF_GAIN = 8  # --save's difference images: 32 levels of difference and more show white


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@engine_options
@click.option("--against", default="fp32", show_default=True, type=click.Choice(["fp32"]),
              help="Reference mode: fp32 on ort-cpu, the exact images.")
@click.option("--prompts", "prompts_file", default=None, type=click.Path(path_type=Path),
              help="Text file, one prompt per line (# starts a comment). Default: 8 built-in prompts (captions "
                   "of its world on the built-in model, so adherence is judged too).")
@click.option("--seeds", default=1, show_default=True, type=int, help="Seeds per prompt: 0..N-1.")
@click.option("--size", default=None, help="WIDTHxHEIGHT in pixels (default: the bundle's default size).")
@click.option("--steps", default=20, show_default=True, type=int, help="Sampling steps.")
@click.option("--sampler", default="euler", show_default=True, help="Sampler name (see `sdrt samplers`).")
@click.option("--cfg", default=None, type=float,
              help="Guidance scale (default: 7.5; 5 on the built-in model, its own).")
@click.option("--json", "json_path", default=None, type=click.Path(path_type=Path), help="Write the results here.")
@click.option("--save", "save_dir", default=None, type=click.Path(path_type=Path),
              help="Also write each pair of images into this folder: NN-SEED-exact.png, NN-SEED-candidate.png and "
                   f"NN-SEED-diff.png (the absolute difference x{DIFF_GAIN}, so 1 level shows as {DIFF_GAIN}).")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def quality(bundle: Path, backend: str, engines_dir: Path | None, precision: str | None, threads: int,
            spin: bool | None, against: str, prompts_file: Path | None, seeds: int, size: str | None, steps: int,
            sampler: str, cfg: float | None, json_path: Path | None, save_dir: Path | None, quiet: bool) -> None:
    """Measure how far a cheaper mode (--backend/--precision) moves the images from exact fp32, against the gate.

    Exit code 0: the candidate passed the quality gate; 1: it failed (figures printed, JSON written);
    2: bad input."""
    from ..errors import UserError
    from ..manifest import write_atomic
    from ..quality.gate import verdict
    from ..bench.quality_report import REFERENCE_BACKEND, json_bytes, mode_name, table, to_json
    from ..quality.runner import compare_pipelines
    from ..runtime.gate_requests import default_requests
    from ..runtime import Pipeline
    from ..runtime.cpu_policy import spin_for_this_machine
    from .bench import parse_size
    from .output_files import check_outputs, write_all

    width, height = parse_size(size)
    if seeds < 1:
        raise UserError(f"--seeds {seeds} must be at least 1: each prompt runs with seeds 0..N-1")
    prompts = read_prompts(prompts_file) if prompts_file is not None else None
    if json_path is not None:
        check_outputs([json_path])
    spin_choice = spin_for_this_machine(spin, threads)
    say = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))

    reference = Pipeline.load(str(bundle), backend=REFERENCE_BACKEND, precision=against, threads=threads,
                              spin=spin_choice.spin)
    candidate = Pipeline.load(str(bundle), backend=backend, precision=precision, threads=threads,
                              engines_dir=str(engines_dir) if engines_dir else None, spin=spin_choice.spin)
    try:
        fields = {"sampler": sampler} if cfg is None else {"sampler": sampler, "cfg": cfg}
        requests = default_requests(reference, prompts, seeds=seeds, steps=steps,
                                    size=(height, width) if width is not None else None,
                                    prompt_count=8, **fields)
        for pipe in (reference, candidate):  # every user error before anything is computed
            pipe.check(requests[0])
        saved: list[tuple[Path, bytes]] = []
        if save_dir is not None:
            check_outputs([path for n, r in enumerate(requests) for path in pair_paths(save_dir, n, r.seed)])
        if backend == "auto":
            say(candidate.backend_choice)
        mode = mode_name(candidate)
        say(f"{len(requests)} image(s) on the exact reference ({against} on {REFERENCE_BACKEND}) and on {mode}")

        def keep(n: int, request, exact, cheap) -> None:
            saved.extend(pair_files(save_dir, n, request, exact, cheap))

        summary = compare_pipelines(reference, candidate, requests,
                                    progress=lambda n, total: say(f"image {n}/{total} compared"),
                                    on_pair=keep if save_dir is not None else None)
    finally:
        reference.close()
        candidate.close()
    request = requests[0]
    settings = {"bundle": str(bundle), "family": reference.model.family,
                "reference": {"backend": REFERENCE_BACKEND, "precision": against},
                "candidate": {"backend": backend, "precision": precision, "mode": mode,
                              "backend_choice": candidate.backend_choice},
                "steps": steps, "sampler": sampler, "cfg": request.cfg, "width": request.width,
                "height": request.height, "seeds": seeds, "prompts": len(requests) // seeds,
                "threads": threads, "spin": spin_choice.spin, "spin_reason": spin_choice.reason}
    outcome = verdict(summary)
    click.echo(table(settings, requests, summary, outcome))
    if save_dir is not None:
        write_all(saved)
        click.echo(f"wrote {len(saved)} images to {save_dir}")
    if json_path is not None:
        write_atomic(json_path, json_bytes(to_json(settings, requests, summary, outcome)))
        click.echo(f"wrote {json_path}")
    sys.stdout.flush()
    if not outcome.passed:
        sys.exit(EXIT_GATE_FAILED)


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    from ..errors import UserError

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--prompts {path} is not UTF-8 text: save it as a UTF-8 text file, one prompt per line") \
            from None
    except OSError as exc:
        raise UserError(f"--prompts {path} cannot be read ({exc.strerror or exc}): give a text file with one "
                        "prompt per line") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"--prompts {path} has no prompts: write one prompt per line (# starts a comment)")
    return prompts


def pair_paths(folder: Path, index: int, seed: int) -> list[Path]:
    stem = f"{index + 1:02d}-{seed}"
    return [folder / f"{stem}-{kind}.png" for kind in ("exact", "candidate", "diff")]


def pair_files(folder: Path, index: int, request, exact, candidate) -> list[tuple[Path, bytes]]:
    """The exact image, the candidate and their difference (x DIFF_GAIN per channel, black where they agree)."""
    import numpy as np

    from ..runtime.images import png_bytes

    diff = np.abs(exact.astype(np.int16) - candidate.astype(np.int16)) * DIFF_GAIN
    images = (exact, candidate, np.minimum(diff, 255).astype(np.uint8))
    return [(path, png_bytes(image)) for path, image in zip(pair_paths(folder, index, request.seed), images)]
