"""Per-step host overhead of the runtime: sampling-loop wall time minus UNet engine time, per step.

What sdrt adds to every step on top of the network: sampler arithmetic, guidance, temperature, copies into
the engine's bound buffers. Two measurements:
1. `bundle`: full `Pipeline.generate` on a (tiny) bundle with ONNX Runtime: loop time minus the time spent
   inside `engine.run` for the UNet, divided by the steps; `nospin`: the same with ORT's spin-waiting off.
2. `stub`: the same loop at production latent sizes (SD 512 px: 64x64 latents, SDXL 1024 px: 128x128) with a
   UNet stub that returns a fixed array instantly, so everything measured is host work.

    python bench/host_overhead.py [--bundle PATH] [--size 512] [--steps 20] [--repeats 5] [--threads 0]
                                  [--json bench/results/host_overhead.json]

Without --bundle a tiny SD1 bundle is exported to a temporary folder (needs the export extra: torch, diffusers).
"""

from __future__ import annotations

import argparse
import json
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
    """An Engine whose UNet answer is a fixed array: the loop around it is all that is timed."""

    name = "unet"
    inputs: dict = {}
    outputs: dict = {}
    providers = ["stub"]

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.out = {"out_sample": np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.1}

    def run(self, feeds):
        return self.out


def bench_stub(steps: int, repeats: int) -> list[dict]:
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
                unet = GuidedUNet(StubUNet((2 * batch, *shape[1:])), cond, batch, 7.0, 0.0, None)
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
            rows.append({"mode": "stub", "sampler": sampler_name, "latent": f"{side}x{side} ({label})",
                         "batch": batch, "cfg": True, "steps": steps,
                         "host_overhead_us_per_step": statistics.median(times[1:]),
                         "host_overhead_us_per_step_p90": _p90(times[1:]),
                         "unet_ms_per_call": 0.0, "step_ms": statistics.median(times[1:]) / 1e3})
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
                + bench_stub(args.steps, args.repeats))

    print(f"{'mode':6s} {'sampler':13s} {'latent':22s} {'UNet ms/call':>12s} {'step ms':>8s} {'host us/step':>12s} "
          f"{'p90':>7s}")
    for r in rows:
        print(f"{r['mode']:6s} {r['sampler']:13s} {r['latent']:22s} {r['unet_ms_per_call']:12.2f} "
              f"{r['step_ms']:8.2f} {r['host_overhead_us_per_step']:12.1f} {r['host_overhead_us_per_step_p90']:7.1f}")
    import onnxruntime

    from sdrt.manifest import write_atomic

    report = {"machine": platform.platform(), "load_avg_1min": __import__("os").getloadavg()[0], "processor": platform.processor(), "numpy": np.__version__,
              "onnxruntime": onnxruntime.__version__, "cfg": 7.0, "rows": rows}
    write_atomic(args.json, json.dumps(report, indent=2).encode())
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
