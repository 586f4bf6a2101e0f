"""Frames to an animation file's bytes: animated WebP or GIF with Pillow, MP4 with imageio-ffmpeg when the
user has it (an optional extra; its absence is one line, found before any frame is generated)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError

FORMATS = (".webp", ".gif", ".mp4")
DEFAULT_QUALITY = 90  # lossy WebP quality for frames larger than SMALL_FRAME_SIDE
SMALL_FRAME_SIDE = 256  # frames up to this many pixels a side are written lossless by default


def check_format(path: Path) -> None:
    """Refuse an unknown extension, or .mp4 without imageio-ffmpeg, before the work starts."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"output {path} must end in .webp, .gif or .mp4 (the animation's format)")
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise UserError("MP4 output needs imageio-ffmpeg (pip install imageio-ffmpeg): install it, or write "
                            ".webp or .gif instead") from None


def webp_quality(frames: Sequence[np.ndarray], quality: int | None) -> int:
    """The WebP quality for these frames: `quality` when given; else lossless (100) for frames up to
    SMALL_FRAME_SIDE pixels a side, 90 above. Lossy WebP subsamples chroma by 2, which on small frames of
    saturated colours is most of the picture (64-px frames at quality 90 lost 12.6/255 on average); lossless
    frames that small cost little."""
    if quality is not None:
        return quality
    return 100 if max(frames[0].shape[:2]) <= SMALL_FRAME_SIDE else DEFAULT_QUALITY


def animation_bytes(frames: Sequence[np.ndarray], suffix: str, duration_ms: int, quality: int | None = None) -> bytes:
    """uint8 [H, W, 3] frames as one looping animation; WebP at `quality` (100: lossless; None: webp_quality)."""
    suffix = suffix.lower()
    if suffix == ".mp4":
        return _mp4(frames, duration_ms)
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    if suffix == ".webp":
        quality = webp_quality(frames, quality)
        images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:], duration=duration_ms,
                       loop=0, lossless=quality >= 100, quality=min(quality, 100), method=4)
    else:
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms,
                       loop=0, disposal=2, optimize=False)
    return buffer.getvalue()


def _mp4(frames: Sequence[np.ndarray], duration_ms: int) -> bytes:
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    fd, name = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(name, (width, height), fps=1000.0 / duration_ms, codec="libx264",
                                             pix_fmt_out="yuv420p", macro_block_size=2, quality=8)
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return Path(name).read_bytes()
    finally:
        Path(name).unlink(missing_ok=True)
