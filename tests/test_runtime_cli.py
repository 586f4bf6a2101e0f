"""`sdrt generate`: a run writes PNGs equal to the Python API's images with their settings inside; bad input
gives exactly one line on stderr, exit code 2, and no file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli_helpers
from sdrt.manifest import Manifest
from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.schedulers import sampler_names

SAMPLER = "ddim"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    return cli_helpers.run_cli("generate", args, capsys)


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle("sd1")


@pytest.fixture
def broken_bundle(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_generate_writes_pngs_matching_the_api(bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "cat.png"
    code, stdout, err = run_cli([str(bundle), "a cat", "--steps", "3", "--sampler", SAMPLER, "--seed", "40",
                                 "--batch", "2", "--negative", "dog", "--no-spin", "--backend", "ort-cpu",
                                 "-o", str(out)], capsys)
    assert code == 0, err
    paths = [tmp_path / "out" / "cat-40.png", tmp_path / "out" / "cat-41.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]
    api = Pipeline.load(str(bundle)).generate(
        GenerationRequest("a cat", negative="dog", steps=3, sampler=SAMPLER, seed=40, batch=2))
    for path, expected, seed in zip(paths, api.images, (40, 41)):
        with Image.open(path) as png:
            assert np.array_equal(np.asarray(png.convert("RGB")), expected)
            parameters = png.info["parameters"]
        lines = parameters.split("\n")
        assert lines[0] == "a cat" and lines[1] == "Negative prompt: dog"
        assert f"Seed: {seed}," in lines[2] and "Steps: 3," in lines[2] and "Size: 64x64" in lines[2]
    assert "wrote" in stdout and "CPUExecutionProvider" in stdout


def test_image_i_of_a_batch_is_the_single_image_of_its_seed(bundle: Path) -> None:
    """The documented generator: per-image PCG64 streams, so batch position does not change a picture."""
    pipe = Pipeline.load(str(bundle))
    batch = pipe.generate(GenerationRequest("a cat", steps=3, sampler="ddpm", seed=7, batch=2))
    single = pipe.generate(GenerationRequest("a cat", steps=3, sampler="ddpm", seed=8, batch=1))
    np.testing.assert_array_equal(batch.latents[1], single.latents[0])
    other = pipe.generate(GenerationRequest("a cat", steps=3, sampler="ddpm", seed=9, batch=1))
    assert np.abs(other.latents[0] - single.latents[0]).max() > 0.1


def error_cases(tmp_path: Path, bundle: Path) -> list[tuple[list[str], str]]:
    image = save(Image.new("RGB", (64, 64), (120, 30, 200)), tmp_path / "image.png")
    small_mask = save(Image.new("L", (32, 64), 255), tmp_path / "mask.png")
    odd_image = save(Image.new("RGB", (60, 64)), tmp_path / "odd.png")
    names = ", ".join(sampler_names())
    model = Manifest.load(bundle).model
    too_tall = model.max_size + 8
    return [
        (["--width", "60"], "width 60 is not a multiple of 8: use 56 or 64"),
        (["--height", str(too_tall)], f"height {too_tall} is outside this bundle's range {model.min_size}.."
                                      f"{model.max_size}: choose a size in that range, or re-export with "
                                      f"`sdrt export --max-size {too_tall}`"),
        (["--sampler", "dpmpp2m"], f"unknown sampler 'dpmpp2m': did you mean 'dpmpp_2m'? choose one of {names}"),
        (["--temperature", "0"], "temperature must be a positive number, got 0.0: use e.g. 0.8 or 1.2"),
        (["--temperature", "-1.5"], "temperature must be a positive number, got -1.5: use e.g. 0.8 or 1.2"),
        (["--init-image", str(image), "--mask", str(small_mask)],
         "the mask is 32x64 but the init image is 64x64: give a mask of the image's size"),
        (["--mask", str(small_mask)], "a mask needs the image it applies to: pass --init-image as well"),
        (["--init-image", str(odd_image)], "width 60 is not a multiple of 8: use 56 or 64 (or resize the init image)"),
        (["--init-image", str(tmp_path / "nope.png")], f"init image {tmp_path / 'nope.png'} does not exist: "
                                                        "check the path"),
        (["--init-image", str(image), "--strength", "1.5"], "strength must be in (0, 1], got 1.5: use e.g. 0.75"),
        (["--backend", "ort-cuda"], None),  # the reason depends on the machine: checked by prefix
        (["--sampler-option", "eta"], "sampler option 'eta' is not KEY=NUMBER: write e.g. --sampler-option eta=0.5"),
        (["--sampler-option", "nope=1"], "sampler 'ddim' has no option 'nope' (options: eta)"),
        (["--backend", "cuda"], "unknown backend 'cuda': choose one of ort-cpu, openvino, auto, trt, ort-cuda, ort-trt"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_input_is_one_line_exit_2_nothing_written(bundle: Path, tmp_path: Path, capsys, case: int) -> None:
    args, message = error_cases(tmp_path, bundle)[case]
    if message is None and "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("onnxruntime has CUDA here: ort-cuda may be usable")
    out_dir = tmp_path / "out"
    code, _, err = run_cli([str(bundle), "a cat", "--sampler", SAMPLER, *args, "-o", str(out_dir / "x.png")],
                           capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    if message is not None:
        assert err == f"error: {message}\n"
    else:
        assert err.startswith("error: backend ort-cuda unavailable: ")  # the reason depends on the machine
    assert not out_dir.exists()


def test_missing_bundle_file(broken_bundle: Path, tmp_path: Path, capsys) -> None:
    (broken_bundle / "fp32" / "unet.onnx").unlink()
    code, _, err = run_cli([str(broken_bundle), "a cat", "-o", str(tmp_path / "x.png")], capsys)
    assert (code, err) == (2, f"error: bundle file fp32/unet.onnx is missing from {broken_bundle}: "
                              "re-export the model (sdrt export)\n")
    assert not (tmp_path / "x.png").exists()


def test_corrupt_bundle_file(broken_bundle: Path, tmp_path: Path, capsys) -> None:
    unet = broken_bundle / "fp32" / "unet.onnx"
    data = bytearray(unet.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)  # same size: only the hash or the parser can tell
    unet.write_bytes(bytes(data))
    args = [str(broken_bundle), "a cat", "--sampler", SAMPLER, "-o", str(tmp_path / "x.png")]
    code, _, err = run_cli(args + ["--verify"], capsys)
    assert (code, err) == (2, "error: bundle file fp32/unet.onnx is corrupt (sha256 mismatch): re-export the model\n")
    code, _, err = run_cli(args, capsys)  # without --verify the cheap check passes and onnxruntime refuses it
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot load {unet} into onnxruntime (")
    assert err.endswith("the file is corrupt or incomplete, re-export the model (sdrt export)\n")
    assert not (tmp_path / "x.png").exists()


def test_not_a_bundle(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli([str(tmp_path), "a cat"], capsys)
    assert (code, err) == (2, f"error: {tmp_path} is not an sdrt bundle (no manifest.json): "
                              "create one with sdrt export\n")


def test_output_must_be_png(bundle: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli([str(bundle), "a cat", "-o", str(tmp_path / "x.jpg")], capsys)
    assert (code, err) == (2, f"error: output {tmp_path / 'x.jpg'} must end in .png: sdrt writes PNG files "
                              "with their settings inside\n")


def test_auto_backend_says_what_it_chose(bundle: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """On a machine without cuda-python (hidden here, so a GPU machine answers the same) auto settles on ONNX
    Runtime on CPU, says why in one line, and that is what runs."""
    import sys

    monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # importlib.util.find_spec now answers None
    monkeypatch.setitem(sys.modules, "openvino", None)  # no CPU backend to measure against (test_openvino_backend)
    monkeypatch.setenv("SDRT_CACHE_DIR", str(tmp_path / "cache"))
    code, out, err = run_cli([str(bundle), "a cat", "--steps", "2", "--sampler", SAMPLER, "--backend", "auto",
                              "-o", str(tmp_path / "x.png")], capsys)
    assert code == 0
    assert err == ("backend ort-cpu: auto chose ONNX Runtime on CPU (OpenVINO is not installed (import openvino "
                   "failed); pip install 'sdrt[openvino]'); no GPU: cuda-python is not installed, so no GPU can be "
                   "used (pip install 'sdrt[gpu]')\n")
    assert out.startswith(f"wrote {tmp_path / 'x.png'} ") and " on CPUExecutionProvider; " in out
    assert (tmp_path / "x.png").exists()
