"""Interpolation between (prompt, seed) keyframes: where each frame sits, and its noise and conditioning.

- Frames: frame i of F sits at position i * (K - 1) / (F - 1) along K keyframes; the whole part names the
  segment, the fraction t (eased) how far along it. The first and last frames are the first and last
  keyframes exactly; a middle keyframe lands on a frame when F - 1 is a multiple of K - 1.
- Noise: spherical interpolation (slerp) between the two seeds' noise, for every draw the frame makes (the
  initial latents and any noise a stochastic sampler injects), each seed's draws coming from its own
  documented generator (sdrt.runtime.noise). Slerp keeps the noise at unit variance where a straight line
  would shrink it towards the middle; equal seeds give that seed's noise untouched.
- Text: linear interpolation (lerp) of the text encoder outputs, positive and negative rows alike (SDXL's
  pooled embeddings too); equal texts give their conditioning untouched.
At t = 0 and t = 1 both return their end exactly (no arithmetic), so the first and last frames are
bit-identical to `sdrt generate` with that keyframe's prompt and seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..json_limits import loads_bounded
from ..runtime.noise import SeededNoise
from ..runtime.seeds import resolve_seed
from ..runtime.text import Conditioning

EASES = ("linear", "cosine")


@dataclass(frozen=True)
class Keyframe:
    prompt: str
    seed: int
    negative: str | None = None


def ease(t: float, kind: str = "linear") -> float:
    """cosine: slow at both ends of each segment (0 -> 0, 1 -> 1 exactly)."""
    if kind == "linear" or t in (0.0, 1.0):
        return t
    if kind == "cosine":
        return (1.0 - math.cos(math.pi * t)) / 2.0
    raise UserError(f"unknown ease {kind!r}: choose {' or '.join(EASES)}")


def frame_positions(keyframes: int, frames: int, kind: str = "linear") -> list[tuple[int, float]]:
    """(segment, eased t) per frame, segment k going from keyframe k to k + 1."""
    if keyframes < 2:
        raise UserError("an animation needs two keyframes or more: give --from and --to, or --keyframe twice")
    if frames < 2:
        raise UserError(f"--frames {frames} is too few: an animation needs at least 2 frames (first and last)")
    out = []
    for i in range(frames):
        if i == frames - 1:
            out.append((keyframes - 2, 1.0))
            continue
        position = i * (keyframes - 1) / (frames - 1)
        segment = min(int(position), keyframes - 2)
        out.append((segment, ease(position - segment, kind)))
    return out


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of two noise arrays (over all their values); straight for (nearly) parallel
    ones; a and b themselves at t = 0 and 1."""
    if t == 0.0:
        return a
    if t == 1.0:
        return b
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = np.linalg.norm(a64) * np.linalg.norm(b64)
    cos = float(np.clip(a64 @ b64 / norms, -1.0, 1.0)) if norms else 1.0
    if abs(cos) > 0.9995:
        out = (1.0 - t) * a64 + t * b64
    else:
        theta = math.acos(cos)
        out = (math.sin((1.0 - t) * theta) * a64 + math.sin(t * theta) * b64) / math.sin(theta)
    return out.reshape(a.shape).astype(np.float32)


def lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    if t == 0.0:
        return a
    if t == 1.0:
        return b
    return ((1.0 - t) * a.astype(np.float64) + t * b.astype(np.float64)).astype(np.float32)


class InterpolatedNoise:
    """A NoiseSource: each draw is the slerp of the two seeds' draws of that shape (one image per frame)."""

    def __init__(self, seed_a: int, seed_b: int, t: float) -> None:
        self.t = t
        self._a = SeededNoise([seed_a])
        self._b = SeededNoise([seed_b]) if seed_b != seed_a and t != 0.0 else None

    def __call__(self, shape: tuple) -> np.ndarray:
        a = self._a(shape)
        return a if self._b is None else slerp(a, self._b(shape), self.t)


def interpolate_conditioning(a: Conditioning, b: Conditioning, t: float) -> Conditioning:
    if a is b:
        return a
    if a.hidden_states.shape != b.hidden_states.shape:
        raise UserError(f"the prompts encode to different lengths ({a.hidden_states.shape[1]} and "
                        f"{b.hidden_states.shape[1]} tokens): interpolation needs prompts of the same number "
                        "of 75-token windows, so shorten the longer prompt or lengthen the shorter one")
    pooled = None if a.text_embeds is None else lerp(a.text_embeds, b.text_embeds, t)
    return Conditioning(lerp(a.hidden_states, b.hidden_states, t), pooled, a.time_ids)


def parse_keyframe(text: str, negative: str | None = None) -> Keyframe:
    """`PROMPT|SEED` (the last | splits, so a prompt may hold one)."""
    prompt, sep, seed = text.rpartition("|")
    try:
        if not sep or not prompt.strip():
            raise ValueError
        number = int(seed)
    except ValueError:
        raise UserError(f"keyframe {text!r} is not PROMPT|SEED: write e.g. --keyframe \"a red circle|1\"") from None
    return Keyframe(prompt.strip(), resolve_seed(number, f"keyframe {text!r}: seed"), negative)


def load_keyframes(path: Path, negative: str | None = None) -> list[Keyframe]:
    """A JSON list of {"prompt": ..., "seed": ..., "negative": ... (optional)}."""
    try:
        data = loads_bounded(Path(path).read_bytes())
    except FileNotFoundError:
        raise UserError(f"keyframes file {path} does not exist: check the path") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError, JsonTooDeep
        raise UserError(f"cannot read keyframes file {path} ({exc}): give a JSON list of "
                        '{"prompt": ..., "seed": ...}') from None
    if not isinstance(data, list):
        raise UserError(f"keyframes file {path} holds no list: write [{{\"prompt\": \"...\", \"seed\": 1}}, ...]")
    frames = []
    for n, item in enumerate(data, 1):
        ok = (isinstance(item, dict) and isinstance(item.get("prompt"), str) and isinstance(item.get("seed"), int)
              and not isinstance(item.get("seed"), bool) and isinstance(item.get("negative", ""), (str, type(None))))
        if not ok:
            raise UserError(f"keyframe {n} of {path} is not {{\"prompt\": TEXT, \"seed\": NUMBER}} (with an "
                            "optional \"negative\": TEXT): fix that entry")
        seed = resolve_seed(item["seed"], f"keyframe {n} of {path}: seed")
        frames.append(Keyframe(item["prompt"], seed, item.get("negative", negative)))
    return frames


def check_keyframes(keyframes: Sequence[Keyframe]) -> None:
    """Refuse an animation whose keyframes are all the same (every frame would be one image)."""
    if len(keyframes) >= 2 and len(set(keyframes)) == 1:
        raise UserError("the keyframes are all the same prompt and seed, so every frame would be one image: "
                        "change the prompt (--to) or the seed (--seed-to)")
