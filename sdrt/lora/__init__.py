"""LoRA adapters, torch-free: reading kohya / AUTOMATIC1111 and diffusers / PEFT safetensors files, matching
their keys to the parameters of a model, and computing the weight deltas exactly as diffusers' `fuse_lora`
does (`scale * alpha / rank * up @ down`). Used at export (fusion, sdrt/export/lora_fusion.py) and meant for
run-time switching, so nothing here imports torch. See docs/lora.md.
"""
