"""The torch-free runtime: load a bundle, generate images with ONNX Runtime and the numpy samplers.

    from sdrt.runtime import Pipeline, GenerationRequest
    pipe = Pipeline.load("bundles/sd15", backend="ort-cpu")
    result = pipe.generate(GenerationRequest("a lighthouse at dusk", steps=20, sampler="dpmpp_2m", seed=1))
    save_png("out.png", result.images[0], result.parameters[0])

Imports only numpy, onnxruntime, tokenizers, pillow and the rest of sdrt's torch-free modules.
"""

from .bundle import Bundle
from ..backends.engine import Engine, IOSpec
from ..backends.ort_engine import OrtEngine
from ..backends.ort_options import BACKENDS, SessionSettings
from .images import open_image, save_png
from .noise import SeededNoise, batch_seeds
from .pipeline import GenerationResult, Pipeline, Timings
from .request import GenerationRequest
from ..lora.options import LoraOption

__all__ = [
    "BACKENDS", "Bundle", "Engine", "GenerationRequest", "GenerationResult", "IOSpec", "LoraOption", "OrtEngine", "Pipeline",
    "SeededNoise", "SessionSettings", "Timings", "batch_seeds", "open_image", "save_png",
]
