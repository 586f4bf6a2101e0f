"""LoRA files (sdrt/lora): kohya and diffusers/PEFT keys read torch-free, their deltas equal to the weight
change diffusers' load_lora_weights + fuse_lora makes (SD1 and SDXL, text encoders included, two adapters at
once with scales), closed-form deltas for per-module alphas and LoCon convolutions, and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lora_helpers import fused_weights, make_peft_adapter, to_kohya
from sdrt.errors import UserError
from sdrt.lora.adapter import parse_lora_option, read_adapter
from sdrt.lora.deltas import adapter_deltas

FLOAT32_REL = 1e-5  # measured ~2e-7: float32 rounding of the same product


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict:
    """kind -> (peft adapter with a per-module alpha, kohya conversion of a second adapter, its PEFT source)."""
    made = {}
    for kind in ("sd1", "sdxl"):
        root = tmp_path_factory.mktemp(f"lora-{kind}")
        model = tiny_model(kind)
        peft_file = make_peft_adapter(model, root / "a", seed=1, rank=4, alpha=8.0)
        source = make_peft_adapter(model, root / "b", seed=2, rank=2, alpha=1.0, alpha_pattern=False)
        made[kind] = (peft_file, to_kohya(source, root / "b_kohya.safetensors", sdxl=kind == "sdxl"), source)
    return made


def _compare(changes: dict, ours: dict) -> tuple[float, dict[str, int]]:
    """Worst relative difference, and how many weights each component changes (ours == diffusers' set)."""
    worst, counts = 0.0, {}
    for component, by_param in changes.items():
        changed = {n for n, v in by_param.items() if np.abs(v).max() > 0}
        assert changed == set(ours.get(component, {})), component
        counts[component] = len(changed)
        for name in changed:
            theirs = by_param[name]
            worst = max(worst, float(np.abs(ours[component][name] - theirs).max() / np.abs(theirs).max()))
    return worst, counts


@pytest.mark.parametrize("kind,components", [("sd1", {"unet", "text_encoder"}),
                                             ("sdxl", {"unet", "text_encoder", "text_encoder_2"})])
def test_deltas_equal_diffusers_fuse_lora(tiny_model, adapters, kind: str, components: set) -> None:
    peft_file, kohya_file, _ = adapters[kind]
    pairs = [(peft_file, 0.7), (kohya_file, -1.3)]
    _, changes = fused_weights(tiny_model(kind), pairs)
    params = {c: {n: v.shape for n, v in by.items()} for c, by in changes.items()}
    ours = adapter_deltas([(read_adapter(p), s) for p, s in pairs], params)
    worst, counts = _compare(changes, ours)
    print(f"\nPARITY LoRA deltas {kind} (PEFT @0.7 + kohya @-1.3) vs diffusers fuse_lora: max rel diff {worst:.1e}, "
          f"weights changed {counts}")
    assert worst <= FLOAT32_REL
    assert {c for c, n in counts.items() if n} == components
    assert [read_adapter(p).layout for p, _ in pairs] == ["peft", "kohya"]


def test_kohya_converter_loads_in_diffusers_like_its_source(tiny_model, adapters) -> None:
    """The test converter is right: diffusers reads the kohya file into the same weights as the PEFT one."""
    _, kohya_file, source = adapters["sd1"]
    _, from_kohya = fused_weights(tiny_model("sd1"), [(kohya_file, 1.0)])
    _, from_peft = fused_weights(tiny_model("sd1"), [(source, 1.0)])
    for component, by_param in from_peft.items():
        for name, change in by_param.items():
            np.testing.assert_allclose(from_kohya[component][name], change, rtol=0, atol=1e-6)
    assert sum(np.abs(v).max() > 0 for v in from_peft["unet"].values()) == 64


def _save(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def test_closed_form_kohya_alpha_and_locon(tmp_path: Path) -> None:
    """delta = scale * alpha / rank * up @ down, per module alpha; a 3x3 LoCon conv contracts over the rank."""
    rng = np.random.default_rng(0)
    down, up = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    cdown = rng.standard_normal((2, 5, 3, 3)).astype(np.float32)
    cup = rng.standard_normal((6, 2, 1, 1)).astype(np.float32)
    path = _save(tmp_path / "k.safetensors", {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": down,
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": up,
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.alpha": np.array(1.0, np.float32),
        "lora_unet_mid_block_resnets_0_conv1.lora_down.weight": cdown,
        "lora_unet_mid_block_resnets_0_conv1.lora_up.weight": cup})  # no alpha: alpha = rank
    params = {"unet": {"mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight": (4, 3),
                       "mid_block.resnets.0.conv1.weight": (6, 5, 3, 3)}}
    deltas = adapter_deltas([(read_adapter(path), 0.5)], params)["unet"]
    q = sum(up[:, r:r + 1] * down[r:r + 1, :] for r in range(2)) * 0.5 * 1.0 / 2
    np.testing.assert_allclose(deltas["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"], q, atol=1e-6)
    conv = np.einsum("or,rikl->oikl", cup[:, :, 0, 0], cdown) * 0.5 * 2 / 2
    np.testing.assert_allclose(deltas["mid_block.resnets.0.conv1.weight"], conv, atol=1e-5)


def _one_module_file(tmp_path: Path, name: str = "a.safetensors", prefix: str = "lora_unet_") -> Path:
    return _save(tmp_path / name, {f"{prefix}conv_in.lora_down.weight": np.ones((1, 4, 3, 3), np.float32),
                                   f"{prefix}conv_in.lora_up.weight": np.ones((8, 1, 1, 1), np.float32)})


def test_refusals(tmp_path: Path) -> None:
    def message(call) -> str:
        with pytest.raises(UserError) as info:
            call()
        return str(info.value)

    pickle = tmp_path / "style.pt"
    pickle.write_bytes(b"\x80\x04not read")
    assert message(lambda: read_adapter(pickle)).startswith("LoRA style.pt is a pickle file (.pt), which sdrt "
                                                            "never opens")
    assert message(lambda: read_adapter(tmp_path / "none.safetensors")) == (
        f"LoRA {tmp_path / 'none.safetensors'} does not exist: pass a .safetensors file")
    good = _one_module_file(tmp_path).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[:-10])
    assert message(lambda: read_adapter(tmp_path / "cut.safetensors")) == (
        "LoRA cut.safetensors is not a readable .safetensors file (damaged or truncated): copy it again")
    assert message(lambda: parse_lora_option("a.safetensors:nan")) == (
        "LoRA scale nan for a.safetensors is not finite: pass a number such as 0.8")
    assert message(lambda: parse_lora_option("a.safetensors:strong")) == (
        "--lora takes FILE[:SCALE], got 'a.safetensors:strong': the scale 'strong' is not a number "
        "(e.g. --lora style.safetensors:0.8)")
    assert parse_lora_option("dir/a.safetensors:-0.5") == (Path("dir/a.safetensors"), -0.5)
    assert parse_lora_option("dir/a.safetensors") == (Path("dir/a.safetensors"), 1.0)
    adapter = read_adapter(_one_module_file(tmp_path, "xl.safetensors", "lora_te2_"))
    params = {"unet": {"conv_in.weight": (8, 4, 3, 3)}, "text_encoder": {}}
    assert message(lambda: adapter_deltas([(adapter, 1.0)], params)) == (
        "LoRA xl.safetensors does not fit this model: 0 of its 1 modules match, 1 text_encoder_2 modules "
        "(e.g. conv_in) do not; pass an adapter trained for this model's architecture")
    same = read_adapter(tmp_path / "a.safetensors")
    assert message(lambda: adapter_deltas([(same, 1.0), (same, 0.5)], params)) == (
        "LoRA a.safetensors is given twice: pass each adapter once, with the scale you want")
    assert adapter_deltas([(same, 1.0)], params)["unet"]["conv_in.weight"].shape == (8, 4, 3, 3)


def test_lora_package_imports_no_torch() -> None:
    """Run-time switching will use sdrt.lora in the torch-free runtime."""
    import subprocess
    import sys

    from test_torch_free import HEAVY, ROOT, _package_modules

    modules = _package_modules("sdrt.lora")
    assert "sdrt.lora.deltas" in modules
    code = f"import sys, {', '.join(modules)}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_kohya_sdxl_ldm_block_names(tiny_model, adapters, tmp_path: Path) -> None:
    """kohya's SDXL files name UNet modules by LDM blocks (input_blocks_4_1_...): same deltas as diffusers."""
    from lora_helpers import to_sgm_names

    model = tiny_model("sdxl")
    layers = json.loads((model / "unet" / "config.json").read_text())["layers_per_block"]
    sgm = to_sgm_names(adapters["sdxl"][1], tmp_path / "sgm.safetensors", layers)
    _, changes = fused_weights(model, [(sgm, 0.6)])
    params = {c: {n: v.shape for n, v in by.items()} for c, by in changes.items()}
    worst, counts = _compare(changes, adapter_deltas([(read_adapter(sgm), 0.6)], params))
    print(f"\nPARITY kohya SDXL with LDM block names vs diffusers fuse_lora: max rel diff {worst:.1e}, {counts}")
    assert worst <= FLOAT32_REL
    assert counts["unet"] == 104
