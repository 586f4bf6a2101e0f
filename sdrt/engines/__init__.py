"""TensorRT engines built from a bundle's ONNX graphs, keyed by GPU target.

Pure logic (profile specs, shape derivation, cache keys, the profile chooser) imports only the standard
library and numpy, so it is tested on CPU. Only `sdrt.engines.builder` touches TensorRT, and only inside
its functions.
"""
