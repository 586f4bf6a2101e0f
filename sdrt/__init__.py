"""sdrt: deploy Stable Diffusion for low-latency inference (ONNX export, TensorRT engines, numpy runtime)."""

__version__ = "0.1.0"
