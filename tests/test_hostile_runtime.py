"""Hostile input to the runtime (issue 12, items 5-8, 11-13, 19): every case is one line and exit code 2 with
nothing written, or a correct result; never a traceback, never a black PNG with exit code 0."""

from __future__ import annotations

import math
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli_helpers
from sdrt.errors import UserError
from sdrt.manifest import Manifest
from sdrt.runtime import GenerationRequest, Pipeline, open_image
from sdrt.runtime.images import image_to_array, mask_to_array
from sdrt.schedulers import REGISTRY, NoiseSchedule, Sampler, sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle("sd1")


@pytest.fixture(scope="module")
def pipe(bundle: Path) -> Pipeline:
    return Pipeline.load(str(bundle))


def generate_cli(args: list[str], capsys) -> tuple[int, str, str]:
    return cli_helpers.run_cli("generate", args, capsys)


def assert_one_line_error(code: int, err: str, message: str, out_dir: Path) -> None:
    assert code == 2
    assert err == f"error: {message}\n"
    assert not out_dir.exists()


# ---------------------------------------------------------------------------------------------------------
# Item 5: non-finite results and option values


OPTION_CASES = [
    ("ddim", {"eta": math.nan}, "sampler option eta=nan is out of range for 'ddim': eta must be in [0, 1] (default 0)"),
    ("ddim", {"eta": 1.5}, "sampler option eta=1.5 is out of range for 'ddim': eta must be in [0, 1] (default 0)"),
    ("ddim", {"eta": -0.1}, "sampler option eta=-0.1 is out of range for 'ddim': eta must be in [0, 1] (default 0)"),
    ("euler_a", {"eta": math.inf},
     "sampler option eta=inf is out of range for 'euler_a': eta must be >= 0 (default 1)"),
    ("euler_a", {"s_noise": -1.0},
     "sampler option s_noise=-1.0 is out of range for 'euler_a': s_noise must be >= 0 (default 1)"),
    ("dpmpp_sde", {"s_noise": math.nan},
     "sampler option s_noise=nan is out of range for 'dpmpp_sde': s_noise must be >= 0 (default 1)"),
    ("euler", {"s_churn": math.inf},
     "sampler option s_churn=inf is out of range for 'euler': s_churn must be >= 0 (default 0)"),
    ("euler", {"s_tmax": math.nan},
     "sampler option s_tmax=nan is out of range for 'euler': s_tmax must be >= 0 or inf (default inf)"),
    ("euler", {"s_tmin": 3.0, "s_tmax": 2.0},
     "sampler option s_tmin=3 is above s_tmax=2: churn applies to sigma in [s_tmin, s_tmax], so s_tmin must be "
     "<= s_tmax"),
    ("heun", {"eta": math.nan}, "sampler 'heun' has no option 'eta' (options: none)"),  # unknown name: as before
]


@pytest.mark.parametrize("name, options, message", OPTION_CASES)
def test_sampler_option_values_are_checked(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Sampler.create(name, NoiseSchedule(), 4, **options)


@pytest.mark.parametrize("name, options", [("ddim", {"eta": 1.0}), ("ddim", {"eta": 0.0}),
                                           ("euler", {"s_tmax": math.inf, "s_tmin": 0.5, "s_churn": 100.0}),
                                           ("euler_a", {"eta": 2.0, "s_noise": 0.0})])
def test_sampler_option_values_at_the_range_ends_are_accepted(name: str, options: dict) -> None:
    sampler = Sampler.create(name, NoiseSchedule(), 4, **options)
    assert all(sampler.options[key] == value for key, value in options.items())


def test_nan_sampler_option_is_one_line_not_a_black_png(bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, _, err = generate_cli([str(bundle), "a cat", "--sampler", "ddim", "--sampler-option", "eta=nan",
                                 "--steps", "2", "-o", str(out / "x.png")], capsys)
    assert_one_line_error(code, err, OPTION_CASES[0][2], out)


def test_extreme_cfg_gives_an_error_naming_it_not_a_black_png(bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, _, err = generate_cli([str(bundle), "a cat", "--cfg", "1e40", "--steps", "2", "--sampler", "ddim",
                                 "-o", str(out / "x.png")], capsys)
    assert_one_line_error(code, err, "the sampled latents contain NaN or Inf values, so there is no image: lower "
                                     "--cfg (1e+40 is extreme; 4 to 12 is usual)", out)


def test_nan_from_an_fp16_vae_names_fp32(bundle: Path, monkeypatch) -> None:
    """A VAE decoder overflowing in fp16 (finite latents, NaN pixels) is refused with the fp32 hint."""
    pipe = Pipeline.load(str(bundle), precision="fp16")
    decoder = pipe.engine("vae_decoder")
    real_run = decoder.run

    def overflowing(feeds):
        image = np.array(real_run(feeds)["image"], dtype=np.float32)
        image[0, 0, 0, 0] = np.inf
        return {"image": image}

    monkeypatch.setattr(decoder, "run", overflowing)
    request = GenerationRequest("a cat", steps=2, sampler="ddim")
    message = ("the decoded images contain NaN or Inf values, so there is no image: try --precision fp32 (fp16 "
               "overflows more easily)")
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        pipe.generate(request)


@pytest.mark.parametrize("field, value, message", [
    ("cfg", math.inf, "cfg must be a number >= 0, got inf: use e.g. 7"),
    ("cfg", math.nan, "cfg must be a number >= 0, got nan: use e.g. 7"),
    ("guidance_rescale", math.nan, "guidance rescale must be in [0, 1], got nan: use e.g. 0.7"),
    ("temperature", math.nan, "temperature must be a positive number, got nan: use e.g. 0.8 or 1.2"),
    ("temperature", math.inf, "temperature must be a positive number, got inf: use e.g. 0.8 or 1.2"),
])
def test_non_finite_numbers_are_refused(pipe: Pipeline, field: str, value: float, message: str) -> None:
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        pipe.check(GenerationRequest("a cat", steps=2, **{field: value}))


def test_non_finite_strength_is_refused(pipe: Pipeline) -> None:
    image = Image.new("RGB", (64, 64), (10, 20, 30))
    with pytest.raises(UserError, match=r"^strength must be in \(0, 1\], got nan: use e.g. 0.75$"):
        pipe.check(GenerationRequest("a cat", steps=2, init_image=image, strength=math.nan))


# ---------------------------------------------------------------------------------------------------------
# Item 6: image modes


def repaint_fraction(mask: Image.Image) -> float:
    return float(mask_to_array(mask, *mask.size).mean())


def saved(image: Image.Image, path: Path) -> Image.Image:
    image.save(path)
    return open_image(path, "mask")


def test_16_bit_mask_is_scaled_not_clipped(tmp_path: Path) -> None:
    """Half 0, half 30000 of 65535 (46% grey): nothing to repaint. Pillow's clipping made the grey half white."""
    values = np.zeros((64, 64), dtype=np.uint16)
    values[:, 32:] = 30000
    mask = saved(Image.fromarray(values), tmp_path / "mask16.png")
    assert mask.mode == "I;16"
    assert repaint_fraction(mask) == 0.0
    values[:, 32:] = 40000  # 61% grey: repainted
    assert repaint_fraction(saved(Image.fromarray(values), tmp_path / "mask16b.png")) == 0.5


def test_16_bit_ramp_mask_repaints_its_upper_half(tmp_path: Path) -> None:
    """Every 16-bit level once: levels >= 32768 (of 65535) are >= 0.5. Clipped at 255 it was 99.6% white."""
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    mask = saved(Image.fromarray(ramp), tmp_path / "ramp.png")
    assert repaint_fraction(mask) == 0.5
    resized = mask_to_array(mask, 64, 64)  # resized in float: still the upper half
    assert resized[0, 0, :31].sum() == 0 and resized[0, 0, 33:].min() == 1


def test_big_endian_16_bit_tiff_and_32_bit_integer_masks(tmp_path: Path) -> None:
    values = np.zeros((32, 32), dtype=np.uint16)
    values[:8] = 50000
    values[8:16] = 20000  # below half: kept (Pillow's clipping to 255 made it white)
    big_endian = Image.frombytes("I;16B", (32, 32), values.astype(">u2").tobytes())
    mask = saved(big_endian, tmp_path / "mask.tif")
    assert mask.mode == "I;16B"
    assert repaint_fraction(mask) == 0.25
    mask = saved(Image.fromarray(values.astype(np.int32)), tmp_path / "mask32.tif")
    assert mask.mode == "I"
    assert repaint_fraction(mask) == 0.25


def test_float_image_is_read_as_levels_0_to_1(tmp_path: Path) -> None:
    """A 0..1 float TIFF: level 0.25 is -0.5 in the VAE's [-1, 1] range (Pillow's conversion made it black)."""
    levels = np.full((16, 16), 0.25, dtype=np.float32)
    levels[:, 8:] = 1.0
    image = saved(Image.fromarray(levels), tmp_path / "float.tif")
    assert image.mode == "F"
    pixels = image_to_array(image, 16, 16)
    assert pixels.shape == (1, 3, 16, 16)
    np.testing.assert_allclose(pixels[0, :, :, :8], -0.5, atol=1e-6)
    np.testing.assert_allclose(pixels[0, :, :, 8:], 1.0, atol=1e-6)
    sixteen = saved(Image.fromarray(np.full((16, 16), 13107, dtype=np.uint16)), tmp_path / "16.png")  # 0.2
    np.testing.assert_allclose(image_to_array(sixteen, 16, 16), 2 * 0.2 - 1, atol=1e-6)


def palette_image(mode: str, colour: tuple) -> Image.Image:
    image = Image.new(mode, (8, 8), 0 if mode == "P" else (0, 255))
    image.putpalette(list(colour) * 256)
    return image


@pytest.mark.parametrize("image, expected_rgb", [
    (Image.new("1", (8, 8), 1), (255, 255, 255)),
    (Image.new("L", (8, 8), 100), (100, 100, 100)),
    (palette_image("P", (10, 20, 30)), (10, 20, 30)),
    (Image.new("RGBA", (8, 8), (10, 20, 30, 0)), (10, 20, 30)),  # alpha dropped, as diffusers' convert("RGB")
    (Image.new("LA", (8, 8), (100, 0)), (100, 100, 100)),
    (palette_image("PA", (10, 20, 30)), (10, 20, 30)),
    (Image.new("CMYK", (8, 8), (255, 0, 0, 0)), (0, 255, 255)),
    (Image.new("YCbCr", (8, 8), (255, 128, 128)), (255, 255, 255)),
    (Image.new("HSV", (8, 8), (0, 255, 255)), (255, 0, 0)),
    (Image.new("LAB", (8, 8), (255, 128, 128)), (255, 255, 255)),
    (Image.new("RGBX", (8, 8), (10, 20, 30, 0)), (10, 20, 30)),
    (Image.new("RGBa", (8, 8), (50, 50, 50, 128)), (100, 100, 100)),  # premultiplied by alpha 128/255
    (Image.new("La", (8, 8), (50, 128)), (100, 100, 100)),  # no direct conversion in Pillow: through LA
    (Image.new("I;16", (8, 8), 65535), (255, 255, 255)),
    (Image.new("I", (8, 8), 32768), (127.5, 127.5, 127.5)),
    (Image.new("F", (8, 8), 0.5), (127.5, 127.5, 127.5)),
], ids=lambda value: getattr(value, "mode", ""))
def test_every_pillow_mode_converts_to_its_colour(image: Image.Image, expected_rgb: tuple) -> None:
    pixels = image_to_array(image, 8, 8)
    expected = np.asarray(expected_rgb, dtype=np.float32)[:, None, None] / 255 * 2 - 1
    np.testing.assert_allclose(pixels[0], np.broadcast_to(expected, (3, 8, 8)), atol=2.5 / 255)


def test_every_pillow_mode_is_covered_above() -> None:
    """New modes in a future Pillow must be added to the table (or refused)."""
    from PIL import ImageMode

    modes = {mode for mode in ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA",
                               "RGBX", "RGBa", "La", "I;16", "I;16B", "I;16L", "I;16N")}
    for mode in modes:
        ImageMode.getmode(mode)  # each is a mode this Pillow knows
        image_to_array(Image.new(mode, (4, 4)), 4, 4)
        mask_to_array(Image.new(mode, (4, 4)), 4, 4)


@pytest.mark.parametrize("values, message", [
    (np.full((8, 8), 1.5, dtype=np.float32),
     "the init image is a float image with values from 1.5 to 1.5, not levels in 0..1: save it as an 8- or 16-bit "
     "PNG, or as float levels in 0..1"),
    (np.full((8, 8), 70000, dtype=np.int32),
     "the init image holds integer values from 70000 to 70000, not 16-bit levels (0..65535): save it as an 8- or "
     "16-bit PNG"),
])
def test_deep_images_without_a_scale_are_refused(pipe: Pipeline, values: np.ndarray, message: str) -> None:
    image = Image.fromarray(values).resize((64, 64))
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        pipe.check(GenerationRequest("a cat", steps=2, init_image=image))


def test_a_mode_pillow_cannot_convert_is_refused_with_one_line() -> None:
    from sdrt.runtime.images import converted

    class Unconvertible:
        mode = "BGR;15"  # what older Pillow versions opened and could not convert

        def convert(self, mode: str):
            raise ValueError(f"conversion from {self.mode} to {mode} not supported")

    message = ("the init image's pixel format (Pillow mode 'BGR;15') cannot be converted to RGB: save it as an "
               "8-bit RGB or grayscale PNG")
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        converted(Unconvertible(), "RGB", "init image")


# ---------------------------------------------------------------------------------------------------------
# Item 7: zero and negative sizes


@pytest.mark.parametrize("args, message", [
    (["--width", "0"], "width 0 is not a size in pixels: choose a multiple of 8 in {lo}..{hi}, or leave --width "
                       "out for {w}"),
    (["--height", "0"], "height 0 is not a size in pixels: choose a multiple of 8 in {lo}..{hi}, or leave "
                        "--height out for {h}"),
    (["--width", "-64"], "width -64 is not a size in pixels: choose a multiple of 8 in {lo}..{hi}, or leave "
                         "--width out for {w}"),
])
def test_zero_or_negative_size_is_refused(bundle: Path, tmp_path: Path, capsys, args: list[str],
                                          message: str) -> None:
    model = Manifest.load(bundle).model
    h, w = model.default_size
    out = tmp_path / "out"
    code, _, err = generate_cli([str(bundle), "a cat", "--steps", "2", *args, "-o", str(out / "x.png")], capsys)
    assert_one_line_error(code, err, message.format(lo=model.min_size, hi=model.max_size, w=w, h=h), out)


# ---------------------------------------------------------------------------------------------------------
# Item 8: invalid UTF-8 prompts, decompression bombs


@pytest.mark.parametrize("prompt, negative, message", [
    ("a \udcff cat", None, "prompt is not valid UTF-8 text (invalid byte 0xff at character 3): type it again, or "
                           "re-save the text it came from as UTF-8"),
    ("a cat", "x\ud800", "negative prompt is not valid UTF-8 text (invalid lone surrogate U+D800 at character 2): "
                         "type it again, or re-save the text it came from as UTF-8"),
])
def test_prompt_that_is_not_utf8_is_refused(pipe: Pipeline, prompt: str, negative: str | None,
                                            message: str) -> None:
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        pipe.check(GenerationRequest(prompt, negative=negative, steps=2))


def test_invalid_utf8_bytes_on_the_command_line(bundle: Path, tmp_path: Path) -> None:
    """The real path: bytes from the shell, decoded by Python with surrogateescape, through the CLI."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sdrt.cli", "generate", str(bundle), b"a \xff\xfe cat",
                           "--steps", "2", "-o", str(out / "x.png")], cwd=ROOT, env=env, capture_output=True,
                          timeout=300)
    assert done.returncode == 2
    assert done.stderr == (b"error: prompt is not valid UTF-8 text (invalid byte 0xff at character 3): type it "
                           b"again, or re-save the text it came from as UTF-8\n")
    assert not out.exists()


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A 1-bit black PNG of any size, written row by row: 30000 x 30000 is a ~110 kB file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then zero bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [30000, 10000])  # above 2x Pillow's limit (its error), and above 1x (its warning)
def test_decompression_bomb_is_one_line(bundle: Path, tmp_path: Path, capsys, side: int) -> None:
    from PIL import Image as PILImage

    bomb = write_blank_png(tmp_path / "bomb.png", side, side)
    assert bomb.stat().st_size < 2**20
    out = tmp_path / "out"
    code, _, err = generate_cli([str(bundle), "a cat", "--init-image", str(bomb), "-o", str(out / "x.png")], capsys)
    message = (f"init image {bomb} has {side * side:,} pixels, more than the {PILImage.MAX_IMAGE_PIXELS:,} pixels "
               "Pillow opens safely (its decompression-bomb guard): scale it down first")
    assert_one_line_error(code, err, message, out)


def test_blank_png_writer_makes_a_readable_png(tmp_path: Path) -> None:
    """The bomb test's file is a real PNG: the same writer at a small size gives the image Pillow expects."""
    with Image.open(write_blank_png(tmp_path / "small.png", 20, 3)) as image:
        assert (image.mode, image.size) == ("1", (20, 3))
        assert not np.asarray(image).any()


# ---------------------------------------------------------------------------------------------------------
# Item 11: `sdrt samplers` lists the options


def test_samplers_lists_each_samplers_options(capsys) -> None:
    code, out, err = cli_helpers.run_cli("samplers", [], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    ddim = lines.index(next(line for line in lines if line.startswith("ddim ")))
    assert lines[ddim + 1] == ("    --sampler-option eta=0        in [0, 1]    noise per step (0: deterministic DDIM, "
                               "1: DDPM-like)")
    euler = lines.index(next(line for line in lines if line.startswith("euler ")))
    assert lines[euler + 3].split()[:4] == ["--sampler-option", "s_tmax=inf", ">=", "0"]
    for name, spec in REGISTRY.items():
        start = lines.index(next(line for line in lines if line.split()[0] == name))
        listed = [line.split()[1].split("=")[0] for line in lines[start + 1:start + 1 + len(spec.options)]]
        assert listed == list(spec.options), name
    assert sum("--sampler-option" in line for line in lines) == 9  # ddim 1, euler 4, euler_a 2, dpmpp_sde 2


# ---------------------------------------------------------------------------------------------------------
# Item 12: an init image outside the bundle's range


@pytest.mark.parametrize("size, side, value, flag", [((512, 384), "width", 512, "--max-size"),
                                                      ((64, 8), "height", 8, "--min-size")])
def test_init_image_size_out_of_range_says_where_the_size_came_from(bundle: Path, tmp_path: Path, capsys,
                                                                    size: tuple, side: str, value: int,
                                                                    flag: str) -> None:
    model = Manifest.load(bundle).model
    image = tmp_path / "big.png"
    Image.new("RGB", size, (1, 2, 3)).save(image)
    out = tmp_path / "out"
    code, _, err = generate_cli([str(bundle), "a cat", "--init-image", str(image), "-o", str(out / "x.png")], capsys)
    message = (f"{side} {value} (the init image's, {size[0]}x{size[1]}) is outside this bundle's range "
               f"{model.min_size}..{model.max_size}: pass --width and --height to resize the image, or re-export "
               f"with `sdrt export {flag} {value}`")
    assert_one_line_error(code, err, message, out)
    code, _, err = generate_cli([str(bundle), "a cat", "--init-image", str(image), "--width", "64", "--height", "64",
                                 "--steps", "2", "-o", str(out / "x.png")], capsys)
    assert code == 0, err  # the hint works
    assert (out / "x.png").exists()


# ---------------------------------------------------------------------------------------------------------
# Item 13: the README's sampler snippet runs; a numpy Generator is a noise source


def readme_block(after: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text[text.index(after):], re.S).group(1)


def test_readme_sample_snippet_runs_and_denoises() -> None:
    namespace: dict = {}
    exec(readme_block("The samplers run without any engine too"), namespace)  # noqa: S102 - our own README
    latents = namespace["latents"]
    assert latents.shape == (1, 4, 64, 64) and latents.dtype == np.float32
    # The snippet's model is the exact noise prediction for all-zero images, so sampling must land near zero.
    assert np.abs(namespace["initial_noise"]).max() > 3 and np.abs(latents).max() < 0.1


@pytest.mark.parametrize("name", ["euler_a", "ddpm", "dpmpp_2m_sde"])
def test_numpy_generator_is_drawn_from_as_documented(name: str) -> None:
    """A Generator gives exactly what the function `standard_normal(shape, dtype=float32)` on an equal one does."""
    ns = NoiseSchedule()
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8), dtype=np.float32)

    def model(x: np.ndarray, t: float) -> np.ndarray:
        return 0.5 * x

    twin = np.random.Generator(np.random.PCG64(7))
    expected = sample(name, model, latents, lambda shape: twin.standard_normal(shape, dtype=np.float32), ns, 5)
    ours = sample(name, model, latents, np.random.Generator(np.random.PCG64(7)), ns, 5)
    np.testing.assert_array_equal(ours, expected)
    other = sample(name, model, latents, np.random.Generator(np.random.PCG64(8)), ns, 5)
    assert np.abs(other - expected).max() > 1e-3  # the noise is really used


# ---------------------------------------------------------------------------------------------------------
# Item 19: ays on SD 2.x says whose levels it uses

AYS_NOTE = ("--schedule ays uses SD 1.5's noise levels on this SD 2.x bundle: Align Your Steps publishes levels "
            "for SD 1.5 and SDXL only")


def test_ays_on_sd2_gives_a_note(tiny_bundle, pipe: Pipeline) -> None:
    sd2 = Pipeline.load(str(tiny_bundle("sd2v")))
    request = GenerationRequest("a cat", steps=2, schedule="ays")
    assert sd2.notes(request) == [AYS_NOTE]
    assert sd2.generate(request).notes == [AYS_NOTE]
    assert sd2.notes(GenerationRequest("a cat", steps=2, schedule="karras")) == []
    assert pipe.notes(request) == []  # SD 1.x: its own levels


def test_ays_note_is_printed_by_generate(tiny_bundle, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.png"
    code, _, err = generate_cli([str(tiny_bundle("sd2v")), "a cat", "--schedule", "ays", "--steps", "2", "--quiet",
                                 "-o", str(out)], capsys)
    assert code == 0
    assert err == f"note: {AYS_NOTE}\n"
    assert out.exists()
