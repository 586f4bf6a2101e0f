"""Run-time LoRA switching on --backend openvino: the adapted graphs (a Constant per changed initializer
replaced, sdrt/backends/openvino_engine.py) give the images ONNX Runtime gives with the same adapters, the
text encoder included, and a run without adapters afterwards is bit-identical to one before.

Tolerances: OpenVINO f32 within 1/255 of ONNX Runtime (the same bound as without adapters,
tests/test_openvino_backend.py); the fp16 graphs (fp16 Constants feeding a Convert) within 8/255 of ONNX
Runtime f32 (test_runtime_parity's fp16 bound). "Moved" bounds: the adapters change the images by more than
10/255, so a backend that ran the base weights would fail the parity assertions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lora_helpers import make_peft_adapter, to_kohya
from sdrt.backends.openvino_engine import OpenVinoEngine
from sdrt.lora.options import LoraOption
from sdrt.manifest import BundleError
from sdrt.runtime import GenerationRequest, Pipeline

REQUEST = dict(prompt="a photograph of an astronaut riding a horse", negative="blurry", steps=4, sampler="euler",
               cfg=7.0, seed=5)


@pytest.fixture(scope="module")
def adapter_files(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """(a PEFT adapter on the UNet and the text encoder, a kohya one) for sd1."""
    root = tmp_path_factory.mktemp("lora-openvino")
    peft_file = make_peft_adapter(tiny_model("sd1"), root / "a", seed=11, rank=4, alpha=8.0)
    source = make_peft_adapter(tiny_model("sd1"), root / "b", seed=12, rank=2, alpha=1.0, alpha_pattern=False)
    return peft_file, to_kohya(source, root / "style.safetensors", sdxl=False)


def images(pipe: Pipeline, loras=()) -> np.ndarray:
    return np.stack(pipe.generate(GenerationRequest(**REQUEST, loras=list(loras))).images).astype(int)


def test_openvino_adapters_match_onnx_runtime(tiny_bundle, pipelines, adapter_files) -> None:
    peft_file, kohya_file = adapter_files
    ov = Pipeline.load(str(tiny_bundle("sd1")), backend="openvino", threads=1)
    before = images(ov)
    for label, loras in {"PEFT @0.7 + kohya @-1.3": [LoraOption(peft_file, 0.7), LoraOption(kohya_file, -1.3)],
                         "PEFT @0.5": [LoraOption(peft_file, 0.5)]}.items():
        ours, theirs = images(ov, loras), images(pipelines("sd1"), loras)
        diff, moved = int(np.abs(ours - theirs).max()), int(np.abs(ours - before).max())
        print(f"\nopenvino f32 vs ort, run-time LoRA {label}: max pixel diff {diff}/255; vs no adapter {moved}/255")
        assert diff <= 1
        assert moved > 10
    np.testing.assert_array_equal(images(ov), before)
    # the text encoder's part too (the images above would hide a text encoder left on its base weights)
    loras = [LoraOption(peft_file, 0.7)]
    ids = {"input_ids": np.random.default_rng(0).integers(0, 49408, (2, 77)).astype(np.int32)}
    adapted, ort = (p.with_loras(loras).engine("text_encoder") for p in (ov, pipelines("sd1")))
    assert isinstance(adapted, OpenVinoEngine) and adapted is not ov.engine("text_encoder")
    ours, theirs = adapted.run(ids)["last_hidden_state"].copy(), ort.run(ids)["last_hidden_state"]
    base = ov.engine("text_encoder").run(ids)["last_hidden_state"]
    print(f"text encoder: openvino vs ort {np.abs(ours - theirs).max():.1e}, vs base {np.abs(ours - base).max():.2f}")
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.abs(ours - base).max() > 0.1


def test_openvino_fp16_graphs_take_adapters(tiny_bundle, pipelines, adapter_files) -> None:
    loras = [LoraOption(adapter_files[0], 0.7)]
    fp16 = Pipeline.load(str(tiny_bundle("sd1")), backend="openvino", precision="fp16", threads=1)
    ours, theirs, before = images(fp16, loras), images(pipelines("sd1"), loras), images(fp16)
    diff, moved = int(np.abs(ours - theirs).max()), int(np.abs(ours - before).max())
    print(f"\nopenvino fp16 graphs vs ort f32, run-time LoRA: max pixel diff {diff}/255; vs no adapter {moved}/255")
    assert diff <= 8
    assert moved > 10


def test_a_weight_the_graph_lacks_is_refused(tiny_bundle) -> None:
    engine = OpenVinoEngine("unet", tiny_bundle("sd1") / "fp32" / "unet.onnx", threads=1)
    with pytest.raises(BundleError) as caught:
        engine.with_initializers({"unet.no_such.weight": np.zeros(3, np.float32)}, "t")
    assert str(caught.value) == ("unet.onnx has no initializer unet.no_such.weight for OpenVINO to replace "
                                 "(1 missing): re-export the model (sdrt export)")
