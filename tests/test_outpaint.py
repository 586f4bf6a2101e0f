"""Outpainting: margins rounded to the size multiple, the feathered mask, and on both inpainting paths
(9-channel UNet, 4-channel blending) an output of the requested size whose kept region is the VAE round
trip of the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli_helpers
from sdrt.errors import UserError
from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.runtime.images import array_to_uint8, image_to_array
from sdrt.runtime.outpaint import FEATHER_MULTIPLES, canvas, parse_margins, rounded_margins


def test_margins_round_up_and_absorb_the_images_remainder() -> None:
    assert rounded_margins((64, 64), (1, 0, 9, 16), 8) == (8, 0, 16, 16)
    assert rounded_margins((60, 64), (8, 0, 0, 0), 8) == (12, 0, 0, 0)  # 60 + 12 = 72
    assert rounded_margins((60, 64), (8, 8, 0, 0), 8) == (8, 12, 0, 0)
    assert parse_margins("16") == (16, 16, 16, 16) and parse_margins("0, 8,0,0") == (0, 8, 0, 0)


def test_canvas_keeps_the_image_and_feathers_the_mask() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    pixels, mask = canvas(image, (8, 0, 0, 8), "edge", 0, 8)
    assert pixels.shape == (1, 3, 24, 32) and mask.shape == (1, 1, 24, 32)
    assert np.array_equal(pixels[:, :, :16, 8:], image_to_array(image, 24, 16))
    assert np.array_equal(pixels[0, :, 0, :8], np.repeat(pixels[0, :, 0, 8:9], 8, axis=1))  # edge fill
    assert (mask[0, 0, :, :8] == 1).all() and (mask[0, 0, 16:] == 1).all()
    feather = 8 * FEATHER_MULTIPLES
    _, left_only = canvas(image, (8, 0, 0, 0), "edge", 0, 8)
    assert left_only[0, 0, 0, 8:8 + feather] == pytest.approx(1 - (np.arange(feather) + 0.5) / feather)
    assert left_only[0, 0, :, 8 + feather:].max() == 0.0
    noisy, _ = canvas(image, (8, 0, 0, 8), "noise", 1, 8)
    assert np.array_equal(noisy[:, :, :16, 8:], pixels[:, :, :16, 8:]) and not np.array_equal(noisy, pixels)


@pytest.fixture(scope="module")
def source() -> Image.Image:
    y, x = np.mgrid[0:48, 0:56]
    picture = np.stack([x * 4, y * 5, 255 - x * 4], axis=-1).clip(0, 255).astype(np.uint8)
    picture[16:32, 20:36] = (230, 40, 40)
    return Image.fromarray(picture)


@pytest.mark.parametrize("kind", ["sd1_inpaint", "sd1"])  # 9-channel UNet, 4-channel blending
@pytest.mark.parametrize("fill", ["edge", "blur"])
def test_output_size_and_the_kept_region(tiny_bundle, source: Image.Image, kind: str, fill: str) -> None:
    pipe = Pipeline.load(str(tiny_bundle(kind)))
    margins = (12, 0, 8, 16)  # left 12 -> 16
    result = pipe.generate(GenerationRequest("a cat", steps=2, seed=3, init_image=source, outpaint=margins,
                                             outpaint_fill=fill, strength=0.9 if fill == "blur" else None))
    image = result.images[0]
    assert image.shape == (48 + 8 + 16, 56 + 16, 3)
    mean = pipe.encode(image_to_array(source, 56, 48), None, 1)
    round_trip = array_to_uint8(pipe.decode(mean))[0].astype(np.float32)
    original = image[8:56, 16:72].astype(np.float32)
    feather = 8 * FEATHER_MULTIPLES
    kept = (slice(feather, 48 - feather), slice(feather, 56))  # away from the extended top, left, bottom
    assert np.abs(original - round_trip)[kept].mean() < 2.0
    new_area = image[:, :16].astype(np.float32)
    assert np.abs(new_area - new_area.mean(axis=(0, 1))).max() > 0  # painted, not a flat colour
    assert "Outpaint: \"12,0,8,16\", Outpaint fill: " + fill in result.parameters[0]


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle("sd1_inpaint")


def test_cli_outpaint_writes_the_larger_image(bundle: Path, source: Image.Image, tmp_path: Path, capsys) -> None:
    init = tmp_path / "in.png"
    source.save(init)
    out = tmp_path / "out.png"
    code, _, err = cli_helpers.run_cli("generate", [str(bundle), "a cat", "--init-image", str(init), "--outpaint",
                                                    "0,8,0,0", "--outpaint-fill", "noise", "--steps", "2",
                                                    "--seed", "1", "--no-spin", "-o", str(out)], capsys)
    assert code == 0, err
    api = Pipeline.load(str(bundle)).generate(GenerationRequest("a cat", steps=2, seed=1, init_image=source,
                                                                outpaint=(0, 8, 0, 0), outpaint_fill="noise"))
    with Image.open(out) as png:
        assert png.size == (64, 48)
        assert np.array_equal(np.asarray(png.convert("RGB")), api.images[0])


@pytest.mark.parametrize("args, message", [
    (["--outpaint", "8,8"], "--outpaint '8,8' is not LEFT,RIGHT,TOP,BOTTOM pixels >= 0: write e.g. --outpaint "
                            "128,128,0,0"),
    (["--outpaint", "0,0,0,0"], "--outpaint 0,0,0,0 extends nothing: give at least one side in pixels, e.g. "
                                "0,128,0,0"),
    (["--outpaint", "0,80,0,0"], "outpainting 56x48 by 0,80,0,0 makes 136x48: the width 136 is outside this "
                                 "bundle's range 16..128; use smaller margins or a smaller image"),
    (["--outpaint", "0,8,0,0", "--width", "64"], "--outpaint sets the size (the image plus the margins): drop "
                                                 "--width and --height"),
    (["--outpaint", "0,8,0,0", "--mask", "in.png"], "--outpaint makes its own mask: drop --mask (or inpaint "
                                                    "without --outpaint)"),
])
def test_cli_bad_outpaint_is_one_line(bundle: Path, source: Image.Image, tmp_path: Path, capsys, monkeypatch,
                                      args, message) -> None:
    monkeypatch.chdir(tmp_path)
    source.save(tmp_path / "in.png")
    code, _, err = cli_helpers.run_cli("generate", [str(bundle), "a cat", "--init-image", "in.png", *args,
                                                    "-o", "out.png"], capsys)
    assert (code, err) == (2, f"error: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_outpaint_needs_an_init_image(tiny_bundle) -> None:
    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    with pytest.raises(UserError, match="^--outpaint extends an image: pass --init-image as well$"):
        pipe.generate(GenerationRequest("a cat", outpaint=(8, 0, 0, 0)))
