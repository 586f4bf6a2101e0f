"""Graph cleanup: onnxslim vs Polygraphy (constant folding + cleanup) vs none, by node count, time and parity.

Graphs: the tiny SDXL components and a UNet with SD 1.5's exact block structure (2 layers per block, 3
cross-attention levels, 8 heads) but narrow channels, so its node count is SD 1.5's while it runs in seconds.
Parity: ORT CPU against torch at a shape other than the trace shape. Usage:
    python bench/compare_cleanup.py [--json out.json]
Polygraphy's folding needs onnx-graphsurgeon (pip install onnx-graphsurgeon).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sdrt, not an installed one


def sd15_structure_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=8, cross_attention_dim=64, norm_num_groups=32,
    ).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from sdrt.export.cleanup import cleanup_graph
    from sdrt.export.components import ShapeCase, build_component_graphs
    from sdrt.export.gate import check_graph, torch_references
    from sdrt.export.loading import load_source_model
    from sdrt.export.onnx_files import save_model
    from sdrt.export.tiny_models import build_tiny_model
    from sdrt.export.tracing import trace_to_onnx

    work = Path(tempfile.mkdtemp(prefix="sdrt-cleanup-"))
    source = load_source_model(build_tiny_model("sdxl", work / "tiny-sdxl"))
    jobs = [(g, ShapeCase(2, 5, 3), [ShapeCase(1, 8, 8, 154), ShapeCase(3, 6, 5)]) for g in build_component_graphs(source)]
    sd1_source = load_source_model(build_tiny_model("sd1", work / "tiny-sd1"))
    sd1_source.unet = sd15_structure_unet()
    sd1_source.unet.requires_grad_(False)
    sd15_unet = [g for g in build_component_graphs(sd1_source) if g.name == "unet"][0]
    sd15_unet.name = "unet_sd15_structure"
    jobs.append((sd15_unet, ShapeCase(2, 17, 15), [ShapeCase(1, 16, 16, 154), ShapeCase(3, 12, 9)]))

    rows = []
    for graph, trace_at, gate_at in jobs:
        traced = trace_to_onnx(graph, trace_at, work / "scratch", 17)
        refs = torch_references(graph, gate_at)
        for method in ("none", "onnxslim", "polygraphy"):
            t0 = time.perf_counter()
            try:
                cleaned = cleanup_graph(copy.deepcopy(traced), method)  # onnxslim consumes its input
            except Exception as exc:  # noqa: BLE001 - report the tool's failure and go on
                rows.append({"graph": graph.name, "method": method, "error": str(exc)[:200]})
                continue
            seconds = time.perf_counter() - t0
            path = work / method / f"{graph.name}.onnx"
            save_model(cleaned, path)
            record = check_graph(path, graph, refs, "fp32")
            rows.append({"graph": graph.name, "method": method, "nodes": len(cleaned.graph.node),
                         "seconds": round(seconds, 2), "rel": record["worst"]["rel"]})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'graph':22s} {'none':>6s} {'onnxslim':>9s} {'polygraphy':>11s}   worst rel (none / slim / poly)")
    for name in dict.fromkeys(r["graph"] for r in rows):
        by = {r["method"]: r for r in rows if r["graph"] == name}
        counts = [str(by[m].get("nodes", "fail")) for m in ("none", "onnxslim", "polygraphy")]
        rels = " / ".join(f"{by[m]['rel']:.1e}" if "rel" in by[m] else "fail" for m in ("none", "onnxslim", "polygraphy"))
        print(f"{name:22s} {counts[0]:>6s} {counts[1]:>9s} {counts[2]:>11s}   {rels}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    del torch


if __name__ == "__main__":
    main()
