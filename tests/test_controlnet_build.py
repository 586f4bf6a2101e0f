"""`sdrt build` on a ControlNet bundle (on CPU: --dry-run and the build plan with a stand-in build function; no
TensorRT here): the ControlNet engines are built by default, with the U-Net's profiles, and the U-Net's
residual inputs get latent-size / F shapes."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import run_cli

from sdrt.engines.build_plan import plan_builds, run_builds
from sdrt.engines.builder import BuildOptions
from sdrt.engines.profiles import parse_profile
from sdrt.engines.target import GpuTarget
from sdrt.manifest import Manifest

H200 = GpuTarget("10.9.0.34", "9.0", "NVIDIA H200")


def test_dry_run_lists_controlnets_with_the_unet_profiles(controlnet_bundle, capsys) -> None:
    code, out, _ = run_cli("build", [str(controlnet_bundle("sd1", fuse=False)), "--precision", "fp32", "--dry-run",
                                     "--profile", "64x64-128@96", "--batch", "1-2", "--cfg", "on"], capsys)
    assert code == 0
    blocks = {b.split(" profile")[0]: b for b in out.split("\n") if " profile 0 " in b}
    assert list(blocks) == ["text_encoder", "unet", "vae_decoder", "vae_encoder", "controlnet_depth",
                            "controlnet_edges"]
    assert "  down_block_res_2: min [2, 16, 4, 4] opt [2, 16, 6, 4] max [4, 16, 8, 4]" in out.splitlines()
    assert "  mid_block_res: min [2, 32, 4, 4] opt [2, 32, 6, 4] max [4, 32, 8, 4]" in out.splitlines()
    assert "  controlnet_cond: min [2, 3, 64, 64] opt [2, 3, 96, 64] max [4, 3, 128, 64]" in out.splitlines()


def test_controlnet_engines_are_planned_and_built_with_the_unet_shapes(controlnet_bundle, tmp_path) -> None:
    bundle = controlnet_bundle("sdxl")
    manifest = Manifest.load(bundle)
    profiles = [parse_profile("64x64", manifest.model, "1-2", "1", "both")]
    names = ["unet", "controlnet_edges"]
    planned = plan_builds(bundle, manifest, names, "fp32", profiles, tmp_path / "engines", H200)
    built: list[tuple[Path, list]] = []

    def build(onnx: Path, shapes, options, cache, echo) -> bytes:
        built.append((onnx, shapes))
        return b"PLAN " + onnx.name.encode()

    run_builds(planned, tmp_path / "engines", BuildOptions(), build, lambda _: None, profiles)
    assert [onnx.name for onnx, _ in built] == ["unet.onnx", "controlnet_edges.onnx"]
    unet, control = built[0][1][0], built[1][1][0]
    for name in ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"):
        assert control[name] == unet[name], name  # same profile: a ControlNet run pairs with its U-Net run
    assert (control["controlnet_cond"].min, control["controlnet_cond"].max) == ((1, 3, 64, 64), (4, 3, 64, 64))
    assert planned[1].key.component == "controlnet_edges" and planned[1].action == "build"
