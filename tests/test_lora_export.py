"""`sdrt export --lora FILE[:SCALE]`: adapters fused before tracing give the images diffusers gives with the
same adapters fused (load_lora_weights + fuse_lora), the manifest records them, the parameter map places every
LoRA-targetable weight in its ONNX initializer, and bad adapters are refused in one line with nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli
from custom_model_parity import PIXEL_TOL, diffusers_images, latents_for, max_diff, sdrt_images
from lora_helpers import corrupt_adapter, fused_weights, half_fitting_sdxl_adapter, make_peft_adapter, to_kohya

PROMPT, NEGATIVE = "a photograph of an astronaut riding a horse", "blurry"


def _adapters(model: Path, root: Path, sdxl: bool) -> tuple[Path, Path]:
    peft_file = make_peft_adapter(model, root / "a", seed=11, rank=4, alpha=8.0)
    source = make_peft_adapter(model, root / "b", seed=12, rank=2, alpha=1.0, alpha_pattern=False)
    return peft_file, to_kohya(source, root / "style.safetensors", sdxl=sdxl)


@pytest.mark.parametrize("kind,changed", [("sd1", {"unet": 64, "text_encoder": 18}),
                                          ("sdxl", {"unet": 104, "text_encoder": 18, "text_encoder_2": 18})])
def test_fused_export_matches_diffusers_fuse_lora(tiny_model, tiny_bundle, tmp_path: Path, capsys, kind: str,
                                                  changed: dict) -> None:
    peft_file, kohya_file = _adapters(tiny_model(kind), tmp_path, sdxl=kind == "sdxl")
    capsys.readouterr()
    out = tmp_path / "bundle"
    code, _, err = run_cli("export", [str(tiny_model(kind)), str(out), "--precision", "fp32",
                                      "--lora", f"{peft_file}:0.7", "--lora", f"{kohya_file}:-1.3"], capsys)
    assert code == 0, err
    modules = sum(changed.values())
    assert f"LoRA adapter (peft, {modules} modules) fused at scale 0.7" in err
    assert f"LoRA style (kohya, {modules} modules) fused at scale -1.3" in err
    record = json.loads((out / "manifest.json").read_text())["export"]["loras"]
    assert [(a["name"], a["sha256"], a["scale"]) for a in record["adapters"]] == [
        ("adapter", hashlib.sha256(peft_file.read_bytes()).hexdigest(), 0.7),
        ("style", hashlib.sha256(kohya_file.read_bytes()).hexdigest(), -1.3)]
    assert record["weights_changed"] == changed

    reference, _ = fused_weights(tiny_model(kind), [(peft_file, 0.7), (kohya_file, -1.3)])
    latents = latents_for(out, 3)
    ours = sdrt_images(out, PROMPT, NEGATIVE, latents)
    theirs = diffusers_images(reference, f"{tiny_model(kind)} lora", kind, PROMPT, NEGATIVE, latents)
    base = sdrt_images(tiny_bundle(kind), PROMPT, NEGATIVE, latents)
    diff = max_diff(ours, theirs)
    print(f"\nPARITY export --lora {kind} (PEFT @0.7 + kohya @-1.3) vs diffusers fuse_lora: max pixel diff "
          f"{diff * 255:.3f}/255; vs no adapter {max_diff(ours, base) * 255:.1f}/255")
    assert diff <= PIXEL_TOL
    assert max_diff(ours, base) > 5 * PIXEL_TOL  # the adapters really change the images


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.mark.parametrize("kind,precision", [("sd1", "fp32"), ("sd1", "fp16"), ("sdxl", "fp32")])
def test_parameter_map_places_every_lora_target(tiny_model, tiny_bundle, kind: str, precision: str) -> None:
    """Every UNet weight LoRA/LoCon can target (attention q/k/v/out, ff, proj_in/out, ResNet convs, ...: all
    of them) and every text-encoder Linear is found, and the initializer holds exactly that weight."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    bundle, model = tiny_bundle(kind), tiny_model(kind)
    mapping = json.loads((bundle / "manifest.json").read_text())["export"]["parameter_map"][precision]
    modules = {"unet": UNet2DConditionModel.from_pretrained(model / "unet"),
               "text_encoder": CLIPTextModel.from_pretrained(model / "text_encoder")}
    if kind == "sdxl":
        modules["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(model / "text_encoder_2")
    assert set(mapping) == set(modules)
    for component, module in modules.items():
        inits = _initializers(bundle / precision / f"{component}.onnx")
        targets = {n: p.detach().numpy() for n, p in module.named_parameters()
                   if p.dim() >= 2 and (component == "unet" or "embeddings" not in n)}
        assert set(targets) <= set(mapping[component]), set(targets) - set(mapping[component])
        for name, value in targets.items():
            entry = mapping[component][name]
            stored = inits[entry["initializer"]].astype(np.float32)
            expected = value.T if entry["transposed"] else value
            np.testing.assert_array_equal(stored, expected.astype(stored.dtype if precision == "fp32" else
                                                                  np.float16).astype(np.float32))
    lookup = mapping["unet"]
    for name in ("mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                 "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight",
                 "mid_block.attentions.0.proj_in.weight", "mid_block.resnets.0.conv1.weight"):
        assert name in lookup
    assert lookup["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"]["transposed"] is True
    assert lookup["mid_block.resnets.0.conv1.weight"]["transposed"] is False



def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    pickle = tmp / "style.ckpt"
    pickle.write_bytes(b"\x80\x04never read")
    corrupt = corrupt_adapter(tmp / "corrupt.safetensors")
    xl = half_fitting_sdxl_adapter(tmp / "xl.safetensors")
    return [
        ([f"{pickle}"], "LoRA style.ckpt is a pickle file (.ckpt), which sdrt never opens because unpickling can run "
                        "arbitrary code: convert it to .safetensors with a tool you trust (e.g. the safetensors "
                        "converter of your UI) and pass that file"),
        ([f"{tmp / 'missing.safetensors'}"], f"LoRA {tmp / 'missing.safetensors'} does not exist: pass a "
                                             ".safetensors file"),
        ([f"{corrupt}"], "LoRA corrupt.safetensors is not a readable .safetensors file (damaged or truncated): copy "
                         "it again"),
        ([f"{xl}:inf"], "LoRA scale inf for xl.safetensors is not finite: pass a number such as 0.8"),
        ([f"{xl}", f"{xl}:0.5"], "LoRA xl.safetensors is given twice: pass each adapter once, with the scale you want"),
        ([f"{xl}"], "LoRA xl.safetensors does not fit this model: 1 of its 2 modules match, 1 text_encoder_2 modules "
                    "(e.g. text_model_encoder_layers_0_mlp_fc1) do not; pass an adapter trained for this model's "
                    "architecture"),
    ]


def test_bad_adapters_are_refused_in_one_line(tiny_model, tmp_path: Path, capsys) -> None:
    tiny_model("sd1")
    capsys.readouterr()  # the fixture's own output
    for index, (files, message) in enumerate(_bad_inputs(tmp_path)):
        out = tmp_path / f"out{index}"
        args = [str(tiny_model("sd1")), str(out), "--precision", "fp32"]
        for file in files:
            args += ["--lora", file]
        code, _, err = run_cli("export", args, capsys)
        progress_free = [line for line in err.splitlines() if not line.startswith("[")]
        assert (code, progress_free) == (2, [f"error: {message}"]), err
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
