"""ControlNet: tiny models, export (manifest, residual inputs, mismatches), Canny, the CLI and its bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli_helpers
from sdrt.errors import UserError
from sdrt.manifest import Manifest
from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.runtime.control import ControlSpec, canny, control_pixels

from test_controlnet_parity import control_map

RESIDUALS = ["down_block_res_0", "down_block_res_1", "down_block_res_2", "down_block_res_3", "mid_block_res"]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    return cli_helpers.run_cli(args[0], args[1:], capsys)


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_tiny_controlnet_is_a_diffusers_controlnet_for_the_tiny_base(tmp_path, tiny_model, kind, capsys) -> None:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    code, out, _ = run_cli(["tiny-model", str(tmp_path / "cn"), "--kind", f"{kind}_controlnet"], capsys)
    assert code == 0 and out.strip() == f"tiny {kind}_controlnet model written to {tmp_path / 'cn'}"
    net = ControlNetModel.from_pretrained(tmp_path / "cn")
    unet = UNet2DConditionModel.from_pretrained(tiny_model(kind) / "unet")
    sample, t = torch.randn(1, 4, 8, 6), torch.tensor([500.0])
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64.0, 48, 0, 0, 64, 48]])} \
        if kind == "sdxl" else None
    with torch.no_grad():
        down, mid = net(sample, t, hidden, torch.rand(1, 3, 64, 48), added_cond_kwargs=added, return_dict=False)
        unet(sample, t, hidden, added_cond_kwargs=added, down_block_additional_residuals=down,
             mid_block_additional_residual=mid)  # the residual shapes fit the base U-Net
    assert all(float(r.abs().max()) > 0 for r in [*down, mid])  # not diffusers' zero-initialised output convs


def test_export_records_controlnets_and_residual_inputs(controlnet_bundle, tiny_bundle) -> None:
    manifest = Manifest.load(controlnet_bundle("sd1"))
    assert {n: (c.component, c.family, c.conditioning_channels) for n, c in manifest.controlnets.items()} == {
        "edges": ("controlnet_edges", "sd1", 3), "depth": ("controlnet_depth", "sd1", 3)}
    assert manifest.controlnets["depth"].conditioning == "depth"  # from the folder name
    unet = manifest.component("unet", "fp32")
    assert [t.name for t in unet.inputs] == ["sample", "timestep", "encoder_hidden_states", *RESIDUALS]
    assert [t.shape for t in unet.inputs[3:]] == [["batch", 16, "height", "width"]] * 2 + [
        ["batch", 16, "height_div2", "width_div2"], ["batch", 32, "height_div2", "width_div2"],
        ["batch", 32, "height_div2", "width_div2"]]
    net = manifest.component("controlnet_edges", "fp32")
    assert [t.name for t in net.inputs] == ["sample", "timestep", "encoder_hidden_states", "controlnet_cond"]
    assert [t.name for t in net.outputs] == RESIDUALS
    assert net.accuracy["passed"] and net.accuracy["worst"]["rel"] <= 1e-4
    plain = json.loads((tiny_bundle("sd1") / "manifest.json").read_text())
    assert "controlnets" not in plain  # a bundle without --controlnet is as before
    assert [t["name"] for t in plain["components"]["fp32"]["unet"]["inputs"]] == [
        "sample", "timestep", "encoder_hidden_states"]


def test_sdxl_bundle_controlnet_takes_the_added_conditioning(controlnet_bundle) -> None:
    net = Manifest.load(controlnet_bundle("sdxl")).component("controlnet_edges", "fp32")
    assert [t.name for t in net.inputs] == ["sample", "timestep", "encoder_hidden_states", "controlnet_cond",
                                            "text_embeds", "time_ids"]


def test_export_refuses_a_controlnet_for_another_base(tmp_path, tiny_model, tiny_controlnet, capsys) -> None:
    out = tmp_path / "bundle"
    code, _, err = run_cli(["export", str(tiny_model("sd1")), str(out), "--precision", "fp32", "--controlnet",
                            str(tiny_controlnet("sdxl"))], capsys)
    lines = [line for line in err.splitlines() if not line.startswith("[")]
    assert code == 2 and lines == ["error: ControlNet edges is for SDXL but the model is SD 1.x (cross_attention_dim "
                                   "64 != 32): use a ControlNet trained for this base model"]
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial folder


def test_export_refuses_a_folder_that_is_no_controlnet(tmp_path, tiny_model, capsys) -> None:
    out = tmp_path / "bundle"
    code, _, err = run_cli(["export", str(tiny_model("sd1")), str(out), "--controlnet",
                            str(tiny_model("sd1") / "unet")], capsys)
    assert code == 2 and err.strip() == (f"error: ControlNet {tiny_model('sd1') / 'unet'} holds a "
                                         "UNet2DConditionModel, not a ControlNetModel: pass a diffusers "
                                         "ControlNetModel folder")
    assert not out.exists()


def test_canny_is_opencv_canny_bit_for_bit() -> None:
    import cv2

    rgb = np.asarray(control_map(96, 64, seed=3)).copy()
    rgb[10:50, 20:70] = (np.random.default_rng(1).random((40, 50, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    for low, high in ((100, 200), (30, 90)):
        edges = cv2.Canny(rgb, low, high)
        ours = np.asarray(canny(image, low, high))
        assert ours.shape == (64, 96, 3) and edges.any()
        assert all(np.array_equal(ours[..., c], edges) for c in range(3))


def test_canny_preprocess_resizes_then_detects() -> None:
    import cv2

    image = control_map(96, 80, seed=4)
    pixels = control_pixels(ControlSpec(image, preprocess="canny"), 64, 48)
    expected = cv2.Canny(np.asarray(image.resize((64, 48), resample=Image.LANCZOS)), 100, 200) / np.float32(255)
    assert pixels.shape == (1, 3, 48, 64) and np.array_equal(pixels[0, 1], expected.astype(np.float32))


def test_canny_without_opencv_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(UserError) as exc:
        canny(control_map())
    assert str(exc.value) == ("--control-preprocess canny needs OpenCV: pip install 'sdrt[controlnet]' "
                              "(opencv-python-headless), or pass an edge map with --control-preprocess none")


def test_sixteen_bit_depth_map_keeps_its_levels() -> None:
    depth = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    pixels = control_pixels(ControlSpec(Image.fromarray(depth)), 64, 64)
    assert np.allclose(pixels[0, 0], depth / 65535.0, atol=1e-6) and np.array_equal(pixels[0, 0], pixels[0, 2])


def test_generate_cli_matches_the_api(controlnet_bundle, tmp_path, capsys) -> None:
    bundle = controlnet_bundle("sd1")
    edges, depth = save(control_map(seed=1), tmp_path / "e.png"), save(control_map(48, 64, seed=2), tmp_path / "d.png")
    out = tmp_path / "o.png"
    code, _, err = run_cli(["generate", str(bundle), "a cat", "--steps", "3", "--seed", "5", "--width", "64",
                            "--height", "64", "-o", str(out), "--control-image", str(edges), "--controlnet", "edges",
                            "--control-image", str(depth), "--controlnet", "depth", "--control-scale", "0.8",
                            "--control-scale", "1.2", "--control-end", "0.6", "--control-preprocess", "canny",
                            "--backend", "ort-cpu"], capsys)  # the API's backend: bit-identical images
    assert code == 0
    assert err.splitlines()[0] == ("note: control image 2 is 48x64 but the output is 64x64: it is stretched to fit; "
                                   "crop it to the output's aspect ratio to avoid distortion")
    pipe = Pipeline.load(str(bundle))
    specs = [ControlSpec(Image.open(edges), 0.8, 0.0, 0.6, "edges", "canny"),
             ControlSpec(Image.open(depth), 1.2, 0.0, 0.6, "depth", "canny")]
    result = pipe.generate(GenerationRequest("a cat", steps=3, seed=5, width=64, height=64, controls=specs))
    written = Image.open(out)
    assert np.array_equal(np.asarray(written), result.images[0])
    assert ('ControlNet 1: "Module: canny, Model: depth, Weight: 1.2, Guidance Start: 0, Guidance End: 0.6"'
            in written.text["parameters"])


def bad_cases(tmp_path: Path, plain: Path, controlled: Path) -> list[tuple[Path, list[str], str]]:
    good = save(control_map(), tmp_path / "map.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    floats = tmp_path / "float.tif"
    Image.fromarray(np.full((8, 8), 3.0, dtype=np.float32)).save(floats)
    return [
        (controlled, ["--control-image", str(tmp_path / "missing.png")],
         f"control image {tmp_path / 'missing.png'} does not exist: check the path"),
        (controlled, ["--control-image", str(text)], None),  # Pillow's reason varies; checked by prefix below
        (controlled, ["--control-image", str(floats), "--controlnet", "depth"],
         "the control image is a float image with values from 3 to 3, not levels in 0..1: save it as an 8- or "
         "16-bit PNG, or as float levels in 0..1"),
        (plain, ["--control-image", str(good)],
         "this bundle has no ControlNet: re-export the model with `sdrt export --controlnet DIR`, or drop "
         "--control-image"),
        (controlled, ["--control-image", str(good), "--controlnet", "pose"],
         "unknown ControlNet 'pose': this bundle has depth, edges"),
        (controlled, ["--control-image", str(good)],
         "this bundle has 2 ControlNets (depth, edges): choose one per control image with --controlnet NAME"),
        (controlled, ["--control-image", str(good), "--controlnet", "edges", "--control-scale", "inf"],
         "control scale must be a finite number, got inf: use e.g. 1.0"),
        (controlled, ["--control-image", str(good), "--controlnet", "edges", "--control-start", "0.7",
                      "--control-end", "0.3"],
         "control start 0.7 is after its end 0.3: give start <= end (e.g. --control-start 0.0 --control-end 1.0)"),
        (controlled, ["--control-scale", "0.5"],
         "--control-scale applies to a control image: pass --control-image FILE as well"),
        (controlled, ["--control-image", str(good), "--control-image", str(good), "--controlnet", "edges",
                      "--controlnet", "depth", "--control-end", "1", "--control-end", "1", "--control-end", "1"],
         "--control-end is given 3 times for 2 control images: give it once (for all) or once per "
         "--control-image, in the same order"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_bad_control_input_is_one_line_exit_2_nothing_written(controlnet_bundle, tiny_bundle, tmp_path, capsys,
                                                              case: int) -> None:
    bundle, args, message = bad_cases(tmp_path, tiny_bundle("sd1"), controlnet_bundle("sd1"))[case]
    out = tmp_path / "out.png"
    code, stdout, err = run_cli(["generate", str(bundle), "a cat", "--steps", "2", "-o", str(out), *args], capsys)
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
    if message is None:
        assert err.startswith(f"error: cannot read control image {tmp_path / 'notes.png'} (") and err.strip().endswith(
            "): give a PNG or JPEG file")
    else:
        assert err.strip() == f"error: {message}"
    assert not out.exists()
