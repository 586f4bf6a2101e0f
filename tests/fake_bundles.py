"""Synthetic bundles for engine-logic tests: a manifest with the exporter's graph IO names and dynamic
dims, and small stand-in files (no ONNX inside: nothing here ever parses them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sdrt.manifest import ComponentSpec, Manifest, ModelInfo, TensorSpec

T = TensorSpec


def _components(sdxl: bool) -> dict[str, ComponentSpec]:
    dim = 2048 if sdxl else 768
    te_out = [T("last_hidden_state", "float16", ["batch", 77, 768]),
              T("penultimate_hidden_state", "float16", ["batch", 77, 768])]
    comps = {
        "text_encoder": ComponentSpec("fp16/text_encoder.onnx", [T("input_ids", "int32", ["batch", 77])], te_out),
        "unet": ComponentSpec(
            "fp16/unet.onnx",
            [T("sample", "float16", ["batch", 4, "height", "width"]),
             T("timestep", "float32", ["batch"]),
             T("encoder_hidden_states", "float16", ["batch", "sequence", dim])]
            + ([T("text_embeds", "float16", ["batch", 1280]), T("time_ids", "float16", ["batch", 6])] if sdxl else []),
            [T("out_sample", "float16", ["batch", 4, "height", "width"])],
            external_data="fp16/unet.onnx.data" if sdxl else None,
        ),
        "vae_decoder": ComponentSpec("fp16/vae_decoder.onnx", [T("latent", "float16", ["batch", 4, "height", "width"])],
                                     [T("image", "float16", ["batch", 3, "image_height", "image_width"])]),
        "vae_encoder": ComponentSpec("fp16/vae_encoder.onnx", [T("image", "float16", ["batch", 3, "height", "width"])],
                                     [T("latent_mean", "float16", ["batch", 4, "h", "w"]),
                                      T("latent_std", "float16", ["batch", 4, "h", "w"])]),
    }
    if sdxl:
        comps["text_encoder_2"] = ComponentSpec(
            "fp16/text_encoder_2.onnx", [T("input_ids", "int32", ["batch", 77])],
            te_out + [T("text_embeds", "float16", ["batch", 1280])],
        )
    return comps


def make_manifest(family: str = "sd1") -> Manifest:
    sdxl = family == "sdxl"
    model = ModelInfo(
        family=family, prediction_type="epsilon", latent_channels=4, unet_in_channels=4, vae_scale_factor=8,
        vae_scaling_factor=0.13025 if sdxl else 0.18215, vae_shift_factor=None,
        default_size=[1024, 1024] if sdxl else [512, 512], min_size=256, max_size=2048 if sdxl else 1024,
        text_embed_dims=[768, 1280] if sdxl else [768],
    )
    comps = _components(sdxl)
    files = {}
    for spec in comps.values():
        for rel in filter(None, (spec.file, spec.external_data)):
            files[rel] = hashlib.sha256(rel.encode()).hexdigest()
    return Manifest(model=model, components={"fp16": comps}, tokenizers={}, scheduler="scheduler.json",
                    files=files, export={})


def write_bundle(root: Path, family: str = "sd1") -> Manifest:
    """Write manifest + stand-in files whose sha256 the manifest records truthfully."""
    manifest = make_manifest(family)
    for rel in manifest.files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"stand-in for {rel}".encode())
        manifest.files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.save(root)
    return manifest
