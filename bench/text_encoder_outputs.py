"""What the clip-skip outputs cost the default path: a full-size text encoder exported with and without them.

    python bench/text_encoder_outputs.py [--runs 30] [--batch 2] [--threads 2] [--sdxl]

Builds CLIP ViT-L/14's text encoder (SD 1.5's: 12 layers, width 768; random weights, same compute), exports it
through sdrt's own TextEncoderGraph twice, as before clip skip (last + penultimate states) and as now (plus
clip_skip_2..4: three more [batch, 77, 768] outputs, each through the final layer norm on SD 1/2), and times
ONNX Runtime (CPU) fetching every output, as the runtime does. Runs alternate between the two graphs, so load
changes on a shared machine hit both; the median and the 10th percentile are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdrt.export.components import (TEXT_LENGTH, ComponentGraph, IOSpec, ShapeCase, _token_ids,  # noqa: E402
                                    _torch_modules, clip_skips)
from sdrt.export.tracing import trace_to_onnx  # noqa: E402
from sdrt.manifest import clip_skip_output  # noqa: E402


def graph(encoder, skips: list[int], sdxl: bool) -> ComponentGraph:
    TextEncoderGraph = _torch_modules()[0]
    width = encoder.config.hidden_size
    names = ["last_hidden_state", "penultimate_hidden_state"] + [clip_skip_output(n) for n in skips]
    vocab = encoder.config.vocab_size
    return ComponentGraph(
        name="text_encoder", module=TextEncoderGraph(encoder, False, skips, sdxl),
        inputs=[IOSpec("input_ids", "int32", ["batch", TEXT_LENGTH])],
        outputs=[IOSpec(n, "float32", ["batch", TEXT_LENGTH, width]) for n in names],
        make_inputs=lambda s, g: (_token_ids(g, s.batch, vocab),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2, help="windows per run (2: negative + positive)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sdxl", action="store_true", help="SDXL's convention (no layer norm on the extra outputs)")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    encoder = CLIPTextModel(config).eval()
    skips = clip_skips(config.num_hidden_layers, args.sdxl)
    ids = np.random.default_rng(0).integers(0, 49406, (args.batch, TEXT_LENGTH)).astype(np.int32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {}
    with tempfile.TemporaryDirectory() as scratch:
        for label, chosen in (("before (2 outputs)", []), (f"now (+{len(skips)} clip-skip outputs)", skips)):
            model = trace_to_onnx(graph(encoder, chosen, args.sdxl), ShapeCase(1, 8, 8), Path(scratch) / label, 17)
            sessions[label] = ort.InferenceSession(model.SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for label, session in sessions.items():  # warm-up
        session.run(None, {"input_ids": ids})
    for _ in range(args.runs):
        for label, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, {"input_ids": ids})
            times[label].append(time.perf_counter() - t0)
    print(f"CLIP ViT-L text encoder, batch {args.batch}, {args.threads} threads, {args.runs} runs each, "
          f"{'SDXL' if args.sdxl else 'SD 1/2'} convention")
    for label, values in times.items():
        p10 = sorted(values)[len(values) // 10]
        print(f"  {label}: median {statistics.median(values) * 1e3:.1f} ms, p10 {p10 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
