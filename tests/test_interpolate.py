"""`sdrt interpolate`: frame positions and slerp in closed form; the first and last frames bit-identical to
`sdrt generate` with the end prompts and seeds (batched frames, a stochastic sampler); keyframes; output
formats; one-line errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli_helpers
from sdrt.errors import UserError
from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.tools.frames import make_frames
from sdrt.tools.interpolation import Keyframe, frame_positions, lerp, slerp

A, B = "a red circle on a blue background", "a yellow square on a black background"


def test_frame_positions_and_ease() -> None:
    assert frame_positions(2, 5) == [(0, 0.0), (0, 0.25), (0, 0.5), (0, 0.75), (0, 1.0)]
    assert frame_positions(3, 5) == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (1, 1.0)]
    cosine = frame_positions(2, 5, "cosine")
    assert [t for _, t in cosine] == pytest.approx([0.0, (1 - math.sqrt(0.5)) / 2, 0.5, (1 + math.sqrt(0.5)) / 2, 1.0])
    with pytest.raises(UserError, match="^--frames 1 is too few: an animation needs at least 2 frames"):
        frame_positions(2, 1)


def test_slerp_and_lerp_closed_form() -> None:
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    assert slerp(a, b, 0.0) is a and slerp(a, b, 1.0) is b
    assert slerp(a, b, 0.5) == pytest.approx([math.sqrt(0.5)] * 2)  # on the circle, where lerp gives 0.5, 0.5
    assert slerp(a, b, 1 / 3) == pytest.approx([math.cos(math.pi / 6), math.sin(math.pi / 6)])
    assert lerp(a, b, 0.25) == pytest.approx([0.75, 0.25]) and lerp(a, b, 1.0) is b


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle("sd1")


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


COMMON = ["--steps", "3", "--sampler", "euler_a", "--cfg", "4", "--negative", "blurry", "--no-spin", "--quiet"]


def test_first_and_last_frames_are_generate_bit_for_bit(bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "anim.webp"
    code, stdout, err = cli_helpers.run_cli("interpolate", [
        str(bundle), "--from", A, "--to", B, "--seed-from", "11", "--seed-to", "12", "--frames", "5",
        "--frames-dir", str(tmp_path / "frames"), "-o", str(out), *COMMON], capsys)
    assert code == 0 and err == "", err
    assert stdout.startswith(f"wrote {out} (5 frames of 64x64, 100 ms each) and 5 PNGs in {tmp_path / 'frames'}")
    for prompt, seed, frame in ((A, 11, 1), (B, 12, 5)):
        target = tmp_path / f"gen-{seed}.png"
        code, _, err = cli_helpers.run_cli("generate", [str(bundle), prompt, "--seed", str(seed), "-o", str(target),
                                                        *COMMON], capsys)
        assert code == 0, err
        assert np.array_equal(png(tmp_path / "frames" / f"frame-{frame:04d}.png"), png(target))
        with Image.open(target) as gen, Image.open(tmp_path / "frames" / f"frame-{frame:04d}.png") as first:
            assert first.info["parameters"] == gen.info["parameters"]
    middle = [png(tmp_path / "frames" / f"frame-{i:04d}.png") for i in (2, 3, 4)]
    assert all(not np.array_equal(m, png(tmp_path / "gen-11.png")) for m in middle)
    with Image.open(tmp_path / "frames" / "frame-0003.png") as image:
        assert image.info["parameters"].endswith(f'Interpolate to: {B}, Interpolate seed: 12, Interpolate t: 0.5000')
    with Image.open(out) as anim:
        assert (anim.format, anim.n_frames, anim.size) == ("WEBP", 5, (64, 64))


def test_keyframes_land_on_frames_and_prompt_only_or_seed_only(bundle: Path) -> None:
    pipe = Pipeline.load(str(bundle))
    base = GenerationRequest("", steps=2, sampler="euler", cfg=4)
    keys = [Keyframe(A, 3), Keyframe(B, 3), Keyframe(B, 9)]  # prompt only, then seed only
    frames = make_frames(pipe, base, keys, frames=5, max_rows=4)
    assert [(f.segment, f.t) for f in frames] == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (1, 1.0)]
    for frame, key in ((frames[0], keys[0]), (frames[2], keys[1]), (frames[4], keys[2])):
        alone = pipe.generate(GenerationRequest(key.prompt, steps=2, sampler="euler", cfg=4, seed=key.seed))
        assert np.array_equal(frame.image, alone.images[0])
    assert len({f.image.tobytes() for f in frames}) == 5


def test_gif_and_a_keyframes_file(bundle: Path, tmp_path: Path, capsys) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"prompt": A, "seed": 1}, {"prompt": B, "seed": 2, "negative": "red"}]))
    out = tmp_path / "anim.gif"
    code, _, err = cli_helpers.run_cli("interpolate", [str(bundle), "--keyframes", str(keys), "--frames", "3",
                                                       "--duration", "40", "-o", str(out), *COMMON], capsys)
    assert code == 0, err
    with Image.open(out) as anim:
        assert (anim.format, anim.n_frames, anim.info["duration"]) == ("GIF", 3, 40)


@pytest.mark.parametrize("args, message", [
    (["--from", A, "-o", "a.mp4"], "MP4 output needs imageio-ffmpeg (pip install imageio-ffmpeg): install it, or "
                                   "write .webp or .gif instead"),
    (["--from", A, "-o", "a.png"], "output a.png must end in .webp, .gif or .mp4 (the animation's format)"),
    (["--from", A, "--seed-from", "4"], "the keyframes are all the same prompt and seed, so every frame would be "
                                        "one image: change the prompt (--to) or the seed (--seed-to)"),
    (["--keyframe", "a cat"], "keyframe 'a cat' is not PROMPT|SEED: write e.g. --keyframe \"a red circle|1\""),
    (["--keyframe", "a cat|1"], "an animation needs two keyframes or more: give --from and --to, or --keyframe twice"),
    (["--to", B], "--to needs --from: give the first frame's prompt as well"),
    (["--from", A, "--keyframe", "a|1"], "give the keyframes one way: --from PROMPT [--to PROMPT], --keyframe "
                                         "PROMPT|SEED (twice or more), or --keyframes FILE.json (got --from/--to and "
                                         "--keyframe)"),
    (["--keyframes", "missing.json"], "keyframes file missing.json does not exist: check the path"),
])
def test_bad_input_is_one_line_and_writes_nothing(bundle: Path, tmp_path: Path, capsys, monkeypatch, args,
                                                  message) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as on a machine without the optional extra
    code, _, err = cli_helpers.run_cli("interpolate", [str(bundle), *args, "--quiet"], capsys)
    assert (code, err) == (2, f"error: {message}\n")
    assert list(tmp_path.iterdir()) == []
