"""Run-time LoRA switching on ONNX Runtime CPU: what a switch costs, first use and cached, against reloading
the UNet session from its file (what switching by re-export or by a fused copy of the bundle would cost).

    python bench/lora_switch.py [--models tiny,mid] [--runs 3] [--rank 16] [--workdir DIR]
                                [--json bench/results/lora_switch_DATE.json]

Models: bench/compare.py's `tiny` (sdrt's tiny SD1) and `mid` (a UNet with SD 1.5's channel widths, 316 M
parameters; see compare.py), exported with fp32 graphs. Adapters: random LoRAs in kohya layout made here
with numpy at --rank on every attention projection (q, k, v, out), feed-forward and proj_in/out Linear of
the UNet and every q/k/v/out/fc Linear of the text encoder - the modules SD 1.5 LoRAs train.
Timed (median of --runs, each on a fresh Pipeline so nothing is cached unless stated):
- reload: new ONNX Runtime sessions of the base UNet and text encoder from their files (the components the
  adapters change: what loading a bundle with the adapters fused in would cost);
- first use: `pipe.with_loras([A])` on a pipeline that never saw A: read the file, compute the deltas, build
  the adapted UNet and text encoder sessions;
- cached: `pipe.with_loras([A])` again (the LRU hit), and switching A -> B -> A with both cached;
- UNet step: one UNet call (batch 2, CFG) at 64x64 px on the base and on the adapted session (the adapted
  graph is optimised exactly like the base, so this ratio should be ~1).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def make_adapter(shapes: dict, out: Path, rank: int, seed: int) -> int:
    """A random kohya LoRA on the usual targets; returns its module count."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for component, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS)):
        for param, shape in shapes.get(component, {}).items():
            module = param[:-len(".weight")]
            if len(shape) != 2 or not module.endswith(targets):
                continue
            stem = PREFIX[component] + module.replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = (rng.standard_normal((rank, shape[1])) * 0.01).astype(np.float32)
            tensors[f"{stem}.lora_up.weight"] = (rng.standard_normal((shape[0], rank)) * 0.01).astype(np.float32)
            tensors[f"{stem}.alpha"] = np.array(rank / 2, np.float32)
    save_file(tensors, str(out))
    return len(tensors) // 3


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def unet_feeds(pipe, side: int) -> dict:
    rng = np.random.default_rng(0)
    f = pipe.model.vae_scale_factor
    hidden = pipe.bundle.manifest.component("unet", pipe.bundle.precision).inputs
    width = next(t.shape[-1] for t in hidden if t.name == "encoder_hidden_states")
    return {"sample": rng.standard_normal((2, 4, side // f, side // f)).astype(np.float32),
            "timestep": np.array([500.0, 500.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, width)).astype(np.float32)}


def step_seconds(engines: list, feeds: dict, runs: int) -> list[float]:
    """Median UNet call per engine, the engines timed in turn (so load changes hit both alike)."""
    for engine in engines:
        engine.run(feeds)  # binds buffers
    times: list[list[float]] = [[] for _ in engines]
    for _ in range(4):  # blocks in turn: A B A B ...
        for engine, out in zip(engines, times):
            out.extend(timed(lambda: engine.run(feeds))[0] for _ in range(runs))
    return [statistics.median(t) for t in times]


def measure(name: str, bundle: Path, workdir: Path, runs: int, rank: int, side: int, alternate: bool) -> dict:
    from sdrt.backends.ort_engine import OrtEngine
    from sdrt.backends.ort_options import SessionSettings
    from sdrt.lora.options import LoraOption
    from sdrt.lora.placement import BundleWeights
    from sdrt.manifest import Manifest
    from sdrt.runtime import Pipeline

    shapes = BundleWeights(bundle, Manifest.load(bundle), "fp32").param_shapes()
    files = [workdir / f"{name}-lora-{k}.safetensors" for k in "ab"]
    modules = [make_adapter(shapes, f, rank, seed) for seed, f in enumerate(files)]
    a, b = LoraOption(files[0], 0.8), LoraOption(files[1], 0.6)
    unet_file = bundle / "fp32" / "unet.onnx"

    reload, first, cached, switches = [], [], [], []
    for _ in range(runs):
        reload.append(timed(lambda: [OrtEngine(c, bundle / "fp32" / f"{c}.onnx", settings=SessionSettings(spin=False))
                                     for c in ("unet", "text_encoder")])[0])
        pipe = Pipeline.load(str(bundle), spin=False)
        pipe.engine("unet"), pipe.engine("text_encoder")
        first.append(timed(lambda: pipe.with_loras([a]))[0])
        cached.append(timed(lambda: pipe.with_loras([a]))[0])
        if alternate:  # a second adapted session held at once: the weights' size again in memory
            pipe.with_loras([b])
            switches.append(timed(lambda: (pipe.with_loras([a]), pipe.with_loras([b]), pipe.with_loras([a])))[0] / 3)
        del pipe
        gc.collect()
    pipe = Pipeline.load(str(bundle), spin=False)
    feeds = unet_feeds(pipe, side)
    base_step, adapted_step = step_seconds([pipe.engine("unet"), pipe.with_loras([a]).engine("unet")], feeds, 5)
    med = statistics.median
    row = {"model": name, "unet_mb": round(unet_file.stat().st_size / 2**20, 1), "adapter_modules": modules[0],
           "rank": rank, "reload_s": med(reload), "first_use_s": med(first), "cached_s": med(cached),
           "alternate_cached_s": med(switches) if switches else None, "unet_step_base_s": base_step, "unet_step_adapted_s": adapted_step,
           "runs": {"reload": reload, "first_use": first, "cached": cached, "alternate": switches}}
    row["first_use_vs_reload"] = row["first_use_s"] / row["reload_s"]
    row["cached_vs_reload"] = row["cached_s"] / row["reload_s"]
    row["adapted_step_vs_base"] = adapted_step / base_step
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | UNet file | adapter | reload UNet + text encoder sessions | first use (UNet + text encoder) | cached | "
             "A->B->A cached, per switch | first use / reload | cached / reload | UNet step adapted / base |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['unet_mb']:.0f} MiB | {r['adapter_modules']} modules, rank {r['rank']} | "
                     f"{r['reload_s'] * 1e3:.0f} ms | {r['first_use_s'] * 1e3:.0f} ms | {r['cached_s'] * 1e6:.0f} us | "
                     f"{_us(r['alternate_cached_s'])} | {r['first_use_vs_reload']:.2f}x | "
                     f"{r['cached_vs_reload']:.5f}x | {r['adapted_step_vs_base']:.2f}x |")
    return "\n".join(lines)


def _us(seconds: float | None) -> str:
    return "not run" if seconds is None else f"{seconds * 1e6:.0f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels for the UNet step timing")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "sdrt" / "bench-lora")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-alternate", default="", metavar="MODELS",
                        help="models on which A->B->A is not timed (it holds two adapted sessions in memory)")
    args = parser.parse_args()

    from compare import prepare

    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        _, bundle, _ = prepare(name, args.workdir)
        rows.append(measure(name, bundle, args.workdir, args.runs, args.rank, args.size,
                            name not in args.no_alternate.split(",")))
        print(f"{name}: done", file=sys.stderr)
    load = os.getloadavg()
    print(table(rows))
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; median of {args.runs}")
    out = args.json or ROOT / "bench" / "results" / f"lora_switch_{datetime.now(timezone.utc):%Y%m%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "load_average": load, "cpus": os.cpu_count(), "runs": args.runs,
                               "created": datetime.now(timezone.utc).isoformat()}, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
