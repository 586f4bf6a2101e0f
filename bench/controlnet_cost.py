"""What the ControlNet residual inputs cost a plain request: the same plain txt2img request on a bundle exported
with --controlnet (its U-Net takes the residual inputs, fed zeros) and on the plain bundle (no residual inputs),
run alternately in one process; prints the ratios.

    python bench/controlnet_cost.py [--models tiny,mid] [--runs 9] [--steps 10] [--threads 2]
                                    [--workdir DIR] [--json bench/results/controlnet_cost_DATE.json]

Models: bench/compare.py's tiny (sd1 tiny, 256x256) and mid (SD 1.5 channel widths 320/640/1280, three levels,
128x128), each with a ControlNet made from its U-Net by diffusers' ControlNetModel.from_unet. Both bundles fp32
on ONNX Runtime CPU, Euler, CFG 7.5, batch 1, the same seed. Reported per model: the median request time and the
median U-Net time per call of each bundle, controlnet / plain ratios (target <= 1.02): of the medians, the
median of the per-pair ratios, and of `--pairs` single U-Net calls run back to back (the figure least moved by
a busy machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's sdrt
sys.path.insert(0, str(HERE))

import compare  # noqa: E402  (bench/compare.py: build_tiny, build_mid, SIZES)


def build_controlnet(model: Path, out: Path) -> Path:
    from diffusers import ControlNetModel, UNet2DConditionModel

    if not (out / "config.json").is_file():
        unet = UNet2DConditionModel.from_pretrained(model / "unet")
        vae_levels = len(json.loads((model / "vae" / "config.json").read_text())["block_out_channels"])
        channels = (8, 8, 16, 16) if unet.config.block_out_channels[0] < 64 else (16, 32, 96, 256)
        assert len(channels) == vae_levels  # the conditioning image is downsampled as the VAE does
        ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels).save_pretrained(out)
    return out


def prepare(name: str, workdir: Path) -> tuple[Path, Path]:
    from sdrt.export.bundle import ExportOptions, export_bundle

    model = workdir / f"{name}-diffusers"
    if not (model / "model_index.json").is_file():
        (compare.build_tiny if name == "tiny" else compare.build_mid)(model)
    net = build_controlnet(model, workdir / f"{name}-controlnet")
    bundles = {"plain": workdir / f"{name}-plain", "controlnet": workdir / f"{name}-with-controlnet"}
    for kind, bundle in bundles.items():
        if not (bundle / "manifest.json").is_file():
            export_bundle(model, bundle, ExportOptions(precisions=("fp32",), overwrite=True,
                                                       controlnets=[net] if kind == "controlnet" else []))
    return bundles["plain"], bundles["controlnet"]


def measure(name: str, plain: Path, controlled: Path, runs: int, steps: int, threads: int, pairs: int) -> dict:
    from sdrt.runtime import GenerationRequest, Pipeline

    height, width = compare.SIZES[name]
    pipes = {"plain": Pipeline.load(str(plain), threads=threads),
             "controlnet": Pipeline.load(str(controlled), threads=threads)}
    assert any(n.startswith("down_block_res_") for n in pipes["controlnet"].engine("unet").inputs)
    request = GenerationRequest("a lighthouse at dusk", steps=steps, sampler="euler", cfg=7.5, seed=1,
                                width=width, height=height)
    for pipe in pipes.values():
        pipe.generate(request)  # warm-up
    totals: dict[str, list[float]] = {k: [] for k in pipes}
    unet: dict[str, list[float]] = {k: [] for k in pipes}
    images = {}
    for run in range(runs):
        order = list(pipes) if run % 2 == 0 else list(reversed(pipes))
        for kind in order:
            t0 = time.perf_counter()
            result = pipes[kind].generate(request)
            totals[kind].append(time.perf_counter() - t0)
            unet[kind].append(result.timings.unet / result.timings.unet_calls)
            images[kind] = result.images[0]
    same = bool((images["plain"] == images["controlnet"]).all())
    pair_ratios = [c / p for p, c in zip(totals["plain"], totals["controlnet"])]
    unet_pairs = paired_unet_calls(pipes, request, pairs)
    med = {k: statistics.median(v) for k, v in totals.items()}
    med_unet = {k: statistics.median(v) for k, v in unet.items()}
    return {"model": name, "size": f"{width}x{height}", "steps": steps, "runs": runs,
            "request_s": totals, "unet_call_s": unet, "median_request_s": med, "median_unet_call_s": med_unet,
            "request_ratio": med["controlnet"] / med["plain"], "unet_ratio": med_unet["controlnet"] / med_unet["plain"],
            "request_pair_ratio_median": statistics.median(pair_ratios), "unet_pairs": unet_pairs,
            "identical_images": same}


def paired_unet_calls(pipes: dict, request, pairs: int) -> dict:
    """One UNet call of each bundle (the ControlNet bundle's with its zero residuals, as a plain request feeds
    them), back to back in alternating order, `pairs` times: the median of the per-pair ratios, which a
    machine's changing load affects far less than a ratio of separate medians."""
    gens = {k: p.prepare(request) for k, p in pipes.items()}
    batches = {k: p.unet_batch() for k, p in pipes.items()}
    seconds: dict[str, list[float]] = {k: [] for k in pipes}
    for i in range(pairs + 2):
        for kind in (list(pipes) if i % 2 == 0 else list(reversed(pipes))):
            _, s = batches[kind].evaluate([gens[kind]])
            if i >= 2:  # the first two pairs warm the buffers
                seconds[kind].append(s)
    ratios = sorted(c / p for p, c in zip(seconds["plain"], seconds["controlnet"]))
    q = len(ratios) // 4
    return {"pairs": pairs, "median_ratio": statistics.median(ratios), "quartiles": [ratios[q], ratios[-q - 1]],
            "median_s": {k: statistics.median(v) for k, v in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=60, help="paired single UNet calls per model")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sdrt-controlnet-cost")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from sdrt.bench.output import machine_facts

    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        plain, controlled = prepare(name, args.workdir)
        rows.append(measure(name, plain, controlled, args.runs, args.steps, args.threads, args.pairs))
    facts = machine_facts()
    print(f"plain request on a ControlNet bundle vs the plain bundle (ORT CPU fp32, {args.threads} threads, "
          f"load {facts['load_average']})")
    print(f"{'model':6s} {'size':8s} {'plain s':>9s} {'cn-bundle s':>12s} {'ratio':>7s} {'pair ratio':>11s} "
          f"{'UNet ms plain':>14s} {'UNet ms cn':>11s} {'paired UNet ratio (quartiles)':>30s}  same image")
    for r in rows:
        m, u = r["median_request_s"], r["unet_pairs"]
        print(f"{r['model']:6s} {r['size']:8s} {m['plain']:9.3f} {m['controlnet']:12.3f} {r['request_ratio']:7.3f} "
              f"{r['request_pair_ratio_median']:11.3f} {u['median_s']['plain'] * 1e3:14.2f} "
              f"{u['median_s']['controlnet'] * 1e3:11.2f} {u['median_ratio']:12.3f} "
              f"({u['quartiles'][0]:.3f}-{u['quartiles'][1]:.3f})  {r['identical_images']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": facts, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
