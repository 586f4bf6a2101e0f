"""`sdrt quantize`: an int8 UNet for a bundle, calibrated on the bundle's own sampler trajectories, kept only
when it passes the quality gate (sdrt.quality), and added to the bundle atomically (docs/quantize.md).

Build-time code: it imports onnx and onnxruntime.quantization, never torch, and the runtime never imports it.
"""
