"""`sdrt interpolate`: an animation through the latent space between prompts and seeds (docs/interpolate.md).

The sampling settings are `sdrt generate`'s own options (the same click objects); keyframes come from
--from/--to (with --seed-from/--seed-to), repeated --keyframe "PROMPT|SEED", or a JSON file. Everything is
checked, including MP4 support, before the first frame runs; the files are written at the end, all or none.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .generate import generate
from ..runtime.seeds import resolve_seed

# generate's options that an animation sets itself or does not take
NOT_SHARED = {"output", "batch", "quiet", "seed", "init_image", "mask", "strength", "outpaint", "outpaint_fill"}


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--from", "prompt_from", default=None, help="Prompt of the first frame.")
@click.option("--to", "prompt_to", default=None, help="Prompt of the last frame (default: --from: seeds only).")
@click.option("--seed-from", default=None, type=int, help="Seed of the first frame (random if omitted or -1).")
@click.option("--seed-to", default=None, type=int, help="Seed of the last frame (default: --seed-from: prompts only).")
@click.option("--negative-to", default=None, help="Negative prompt of the last frame (default: --negative).")
@click.option("--keyframe", "keyframes", multiple=True, metavar="PROMPT|SEED",
              help="A keyframe, repeatable, instead of --from/--to: the frames pass through each in turn.")
@click.option("--keyframes", "keyframes_file", default=None, type=click.Path(path_type=Path),
              help='JSON list of keyframes: [{"prompt": ..., "seed": ..., "negative": ...}, ...].')
@click.option("--frames", default=24, show_default=True, type=click.IntRange(2, 10_000), help="Frames in all.")
@click.option("--ease", default="linear", show_default=True, type=click.Choice(["linear", "cosine"]),
              help="Pace between keyframes: even, or slow at each keyframe.")
@click.option("--duration", default=100, show_default=True, type=click.IntRange(1, 60_000),
              help="Milliseconds per frame.")
@click.option("--quality", default=None, type=click.IntRange(0, 100),
              help="WebP quality, 100: lossless. Default: lossless for frames up to 256 px a side (lossy WebP "
                   "halves the colour resolution, which shows on small frames), else 90.")
@click.option("-o", "--output", default=Path("sdrt-interpolation.webp"), show_default=True,
              type=click.Path(path_type=Path), help="Animation: .webp, .gif, or .mp4 (needs imageio-ffmpeg).")
@click.option("--frames-dir", default=None, type=click.Path(path_type=Path),
              help="Also write each frame as DIR/frame-0001.png, ... (with its settings inside).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="UNet rows per run: frames share runs up to this.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def interpolate(bundle: Path, prompt_from: str | None, prompt_to: str | None, seed_from: int | None,
                seed_to: int | None, negative_to: str | None, keyframes: tuple[str, ...], keyframes_file: Path | None,
                frames: int, ease: str, duration: int, quality: int | None, output: Path, frames_dir: Path | None,
                max_batch: int, quiet: bool, **options) -> None:
    """Animate from one prompt and seed to another (or through keyframes) by interpolating noise and text."""
    from ..runtime.images import png_bytes
    from ..tools.animation import animation_bytes, check_format
    from ..tools.frames import make_frames
    from .grid import base_request, load_pipeline
    from .output_files import check_outputs, write_all

    check_format(output)
    keys = _keyframes(prompt_from, prompt_to, seed_from, seed_to, options.get("negative"), negative_to,
                      keyframes, keyframes_file)
    base = base_request("", {**options, "seed": 0})
    frame_paths = [] if frames_dir is None else [frames_dir / f"frame-{i + 1:04d}.png" for i in range(frames)]
    check_outputs([output, *frame_paths])
    pipe = load_pipeline(bundle, options)
    started = time.perf_counter()

    def done(finished: int, total: int) -> None:
        if not quiet:
            click.echo(f"frame {finished}/{total} done ({time.perf_counter() - started:.1f} s)", err=True)

    try:
        result = make_frames(pipe, base, keys, frames, ease, max_batch, done=done)
    finally:
        pipe.close()
    files = [(output, animation_bytes([f.image for f in result], output.suffix, duration, quality))]
    files += [(path, png_bytes(f.image, f.parameters)) for path, f in zip(frame_paths, result)]
    write_all(files)
    height, width = result[0].image.shape[:2]
    click.echo(f"wrote {output} ({len(result)} frames of {width}x{height}, {duration} ms each)"
               + (f" and {len(frame_paths)} PNGs in {frames_dir}" if frame_paths else "")
               + f" in {time.perf_counter() - started:.2f} s; seeds {', '.join(str(k.seed) for k in keys)}")


def _keyframes(prompt_from, prompt_to, seed_from, seed_to, negative, negative_to, keyframes, keyframes_file):
    from ..errors import UserError
    from ..tools.interpolation import Keyframe, load_keyframes, parse_keyframe

    forms = [name for name, given in (("--from/--to", prompt_from is not None or prompt_to is not None),
                                      ("--keyframe", bool(keyframes)), ("--keyframes", keyframes_file is not None))
             if given]
    if len(forms) != 1:
        raise UserError("give the keyframes one way: --from PROMPT [--to PROMPT], --keyframe PROMPT|SEED "
                        "(twice or more), or --keyframes FILE.json" + (f" (got {' and '.join(forms)})" if forms else ""))
    if keyframes:
        return [parse_keyframe(k, negative) for k in keyframes]
    if keyframes_file is not None:
        return load_keyframes(keyframes_file, negative)
    if prompt_from is None:
        raise UserError("--to needs --from: give the first frame's prompt as well")
    first = resolve_seed(seed_from)
    last = first if seed_to is None else resolve_seed(seed_to)
    return [Keyframe(prompt_from, first, negative),
            Keyframe(prompt_from if prompt_to is None else prompt_to, last,
                     negative if negative_to is None else negative_to)]


interpolate.params.extend(p for p in generate.params
                          if isinstance(p, click.Option) and p.name not in NOT_SHARED
                          and p.name not in {q.name for q in interpolate.params})
