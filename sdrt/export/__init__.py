"""The export stage (torch side): a local Stable Diffusion checkpoint -> a verified ONNX bundle.

Entry point: `sdrt.export.bundle.export_bundle` (the `sdrt export` command). Importing this package loads
nothing heavy; each module imports torch / diffusers / onnx inside its functions. See docs/export.md.
"""
