"""Per-step host overhead of the runtime: sampling-loop wall time minus UNet engine time, per step.

What sdrt adds to every step on top of the network: sampler arithmetic, guidance, temperature, copies into
the engine's bound buffers. Two measurements:
1. `bundle`: full `Pipeline.generate` on a (tiny) bundle with ONNX Runtime: loop time minus the time spent
   inside `engine.run` for the UNet, divided by the steps; `nospin`: the same with ORT's spin-waiting off.
2. `stub`: the same loop at production latent sizes (SD 512 px: 64x64 latents, SDXL 1024 px: 128x128) with a
   UNet stub that returns a fixed array instantly, so everything measured is host work (in warm caches);
   `evict`: the same stub, but each call first writes over a buffer larger than the last-level cache, as a
   CPU UNet does, so the host work runs on cold data caches.
3. `floor`: what any host code costs right after a real UNet call on the same cores: a 50-iteration Python
   loop and a 16-element numpy add, each timed first thing after the call and again at once (warm). The
   difference is the price of caches, TLBs and branch predictors refilled after the UNet's kernels; no
   change to sdrt's own step can go below it.

    python bench/host_overhead.py [--bundle PATH] [--size 512] [--steps 20] [--repeats 5] [--threads 0]
                                  [--json bench/results/host_overhead.json]

Without --bundle a tiny SD1 bundle is exported to a temporary folder (needs the export extra: torch, diffusers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

SAMPLERS = ("ddim", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde", "unipc")


def tiny_bundle(workdir: Path) -> Path:
    from sdrt.export.bundle import ExportOptions, export_bundle
    from sdrt.export.tiny_models import build_tiny_model

    model = build_tiny_model("sd1", workdir / "model")
    out = workdir / "bundle"
    export_bundle(model, out, ExportOptions(precisions=("fp32",)))
    return out


def bench_bundle(bundle: Path, steps: int, repeats: int, threads: int, spin: bool, size: int | None = None) -> list[dict]:
    from sdrt.runtime import GenerationRequest, Pipeline

    pipe = Pipeline.load(str(bundle), threads=threads, spin=spin)
    rows = []
    for sampler in SAMPLERS:
        request = GenerationRequest("a lighthouse at dusk", negative="blurry", steps=steps, sampler=sampler,
                                    cfg=7.0, seed=1, width=size, height=size)
        pipe.generate(request)  # warm-up: sessions, bindings, first-call allocations
        overheads, unet_calls_ms, loops = [], [], []
        for _ in range(repeats):
            t = pipe.generate(request).timings
            overheads.append(t.host_overhead_per_step * 1e6)
            unet_calls_ms.append(t.unet / t.unet_calls * 1e3)
            loops.append(t.loop / t.steps * 1e3)
        side = size // pipe.model.vae_scale_factor if size else None
        rows.append({"mode": "bundle" if spin else "nospin", "sampler": sampler,
                     "latent": f"{side}x{side}" if side else "x".join(map(str, _latent(pipe))),
                     "batch": 1, "cfg": True, "steps": steps,
                     "host_overhead_us_per_step": statistics.median(overheads),
                     "host_overhead_us_per_step_p90": _p90(overheads),
                     "unet_ms_per_call": statistics.median(unet_calls_ms),
                     "step_ms": statistics.median(loops)})
    return rows


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def _latent(pipe) -> tuple[int, int]:
    h, w = pipe.model.default_size
    f = pipe.model.vae_scale_factor
    return h // f, w // f


class StubUNet:
    """An Engine whose UNet answer is a fixed array: the loop around it is all that is timed. With `evict_mb`
    each call first writes one byte per cache line of a buffer that size (counted as UNet time)."""

    name = "unet"
    inputs: dict = {}
    outputs: dict = {}
    providers = ["stub"]

    def __init__(self, shape: tuple[int, ...], evict_mb: int = 0) -> None:
        self.out = {"out_sample": np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.1}
        self.evict = np.zeros(evict_mb << 20, dtype=np.uint8) if evict_mb else None

    def run(self, feeds):
        if self.evict is not None:
            self.evict[::64] += 1
        return self.out


def bench_stub(steps: int, repeats: int, evict_mb: int = 0) -> list[dict]:
    from sdrt.runtime.denoise import GuidedUNet
    from sdrt.runtime.text import Conditioning
    from sdrt.schedulers import NoiseSchedule, Sampler

    ns = NoiseSchedule(timestep_spacing="leading")
    rows = []
    for label, side, dim in (("SD 512px", 64, 768), ("SDXL 1024px", 128, 2048)):
        batch = 1
        shape = (batch, 4, side, side)
        cond = Conditioning(np.zeros((2 * batch, 77, dim), np.float32))
        for sampler_name in SAMPLERS:
            times = []
            for _ in range(repeats + 1):
                sampler = Sampler.create(sampler_name, ns, steps)
                unet = GuidedUNet(StubUNet((2 * batch, *shape[1:]), evict_mb), cond, batch, 7.0, 0.0, None)
                rng = np.random.default_rng(0)
                x = sampler.initial_latents(rng.standard_normal(shape, dtype=np.float32))
                loop = sampler.run(x, lambda s: rng.standard_normal(s, dtype=np.float32))
                t0 = time.perf_counter()
                try:
                    call = next(loop)
                    while True:
                        call = loop.send(unet(call.x, call.timestep))
                except StopIteration:
                    pass
                times.append((time.perf_counter() - t0 - unet.seconds) / steps * 1e6)
            rows.append({"mode": "evict" if evict_mb else "stub", "sampler": sampler_name,
                         "latent": f"{side}x{side} ({label})",
                         "batch": batch, "cfg": True, "steps": steps,
                         "host_overhead_us_per_step": statistics.median(times[1:]),
                         "host_overhead_us_per_step_p90": _p90(times[1:]),
                         "unet_ms_per_call": 0.0, "step_ms": statistics.median(times[1:]) / 1e3})
    return rows


def bench_floor(bundle: Path, threads: int, size: int | None, calls: int = 20) -> list[dict]:
    """The cost of the first Python and numpy work after a real UNet call, against the same work warm."""
    from sdrt.runtime import GenerationRequest, Pipeline

    pipe = Pipeline.load(str(bundle), threads=threads, spin=False)
    pipe.generate(GenerationRequest("a lighthouse", steps=2, seed=1, width=size, height=size))  # bind shapes
    unet = pipe.engine("unet")
    side = (size // pipe.model.vae_scale_factor) if size else _latent(pipe)[0]
    width = unet.inputs["encoder_hidden_states"].shape[-1]
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 4, side, side), dtype=np.float32),
             "timestep": np.full(2, 500.0, dtype=np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, width), dtype=np.float32)}
    small = np.ones(16, dtype=np.float32)
    probes = {"python loop x50": lambda: sum(i for i in range(50)), "numpy add x16": lambda: small + 1}
    rows = []
    for label, probe in probes.items():
        cold, warm = [], []
        for _ in range(calls + 2):
            unet.run(feeds)
            t0 = time.perf_counter()
            probe()
            t1 = time.perf_counter()
            probe()
            cold.append((t1 - t0) * 1e6)
            warm.append((time.perf_counter() - t1) * 1e6)
        rows.append({"mode": "floor", "sampler": label, "latent": f"{side}x{side}", "batch": 1, "cfg": True,
                     "steps": calls, "host_overhead_us_per_step": statistics.median(cold[2:]),
                     "host_overhead_us_per_step_p90": _p90(cold[2:]), "warm_us": statistics.median(warm[2:]),
                     "unet_ms_per_call": 0.0, "step_ms": 0.0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: the bundle's)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/host_overhead.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or tiny_bundle(Path(tmp))
        rows = (bench_bundle(bundle, args.steps, args.repeats, args.threads, spin=True, size=args.size)
                + bench_bundle(bundle, args.steps, args.repeats, args.threads, spin=False, size=args.size)
                + bench_floor(bundle, args.threads, args.size)
                + bench_stub(args.steps, args.repeats)
                + bench_stub(args.steps, args.repeats, evict_mb=64))

    print(f"{'mode':6s} {'sampler':13s} {'latent':22s} {'UNet ms/call':>12s} {'step ms':>8s} {'host us/step':>12s} "
          f"{'p90':>7s}")
    for r in rows:
        print(f"{r['mode']:6s} {r['sampler']:13s} {r['latent']:22s} {r['unet_ms_per_call']:12.2f} "
              f"{r['step_ms']:8.2f} {r['host_overhead_us_per_step']:12.1f} {r['host_overhead_us_per_step_p90']:7.1f}"
              + (f"  (the same at once: {r['warm_us']:.1f} us)" if "warm_us" in r else ""))
    import onnxruntime

    from sdrt.manifest import write_atomic

    report = {"machine": platform.platform(), "load_avg_1min": os.getloadavg()[0],
              "processor": platform.processor(), "numpy": np.__version__,
              "onnxruntime": onnxruntime.__version__, "cfg": 7.0, "rows": rows}
    write_atomic(args.json, json.dumps(report, indent=2).encode())
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
