"""Per-step cost of every registered sampler: sdrt (numpy) against its diffusers counterpart (torch, CPU).

    python bench/schedulers.py [--steps 20] [--repeats 7] [--json bench/results/schedulers.json]

What is timed: the whole sampling loop with a model that returns a precomputed array, so only the sampler's
own work counts. sdrt: `drive(sampler.run(latents, noise), model)` (the run's setup included, Sampler.create
not). diffusers: the pipeline loop `scale_model_input` + `step` over `scheduler.timesteps` (set_timesteps
not included), with `randn_tensor` in the scheduler's module replaced by a precomputed tensor, as sdrt's noise
source is. us/step = loop time / the number of sampling steps the user asked for (heun and dpm2 evaluate the
model about twice per step on both sides; the JSON records model calls per step). Each figure is the median
of about `--repeats` timed runs per side, taken in blocks ordered sdrt, diffusers, diffusers, sdrt (each block
after an untimed run) so that load drifting over time hits both alike; the JSON also keeps the fastest run,
and the load average. Threads: library defaults (torch's intra-op pool; sdrt's multistep samplers keep their
BLAS calls single-threaded), or --torch-threads N for diffusers (1 is the like-for-like comparison).
sdrt reuses its per-schedule step weights and row buffers from one run to the next, so the timed runs after
the warm-up measure that steady state, as diffusers' untimed set_timesteps leaves only the steps to time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from sdrt.manifest import write_atomic  # noqa: E402
from sdrt.schedulers import REGISTRY, NoiseSchedule, Sampler, drive  # noqa: E402

SIZES = ((2, 4, 64, 64), (2, 4, 128, 128))
SD1 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
           steps_offset=1)

# sampler name -> (diffusers class name, constructor arguments beyond the SD1 config)
COUNTERPARTS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False}),
    "lcm": ("LCMScheduler", {"set_alpha_to_one": False}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),  # needs torchsde
    "unipc": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
}


def size_label(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


class SdrtLoop:
    """One sdrt sampling loop, ready to be timed."""

    def __init__(self, name: str, shape: tuple[int, ...], steps: int) -> None:
        rng = np.random.default_rng(0)
        self.sampler = Sampler.create(name, NoiseSchedule.from_config(SD1), steps)
        self.latents = self.sampler.initial_latents(rng.standard_normal(shape, dtype=np.float32))
        self.output = (0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        self.noise_array = rng.standard_normal(shape, dtype=np.float32)
        self.calls = 0

    def noise(self, shape: tuple) -> np.ndarray:
        return self.noise_array

    def model(self, x: np.ndarray, t: float) -> np.ndarray:
        return self.output

    def counting_model(self, x: np.ndarray, t: float) -> np.ndarray:
        self.calls += 1
        return self.output

    def model_calls(self) -> int:
        self.calls = 0
        drive(self.sampler.run(self.latents, self.noise), self.counting_model)
        return self.calls

    def __call__(self) -> float:
        start = time.perf_counter()
        drive(self.sampler.run(self.latents, self.noise), self.model)
        return time.perf_counter() - start


class DiffusersLoop:
    """The same loop through a diffusers scheduler (set_timesteps untimed, randn_tensor precomputed)."""

    def __init__(self, class_name: str, kwargs: dict[str, Any], shape: tuple[int, ...], steps: int) -> None:
        import diffusers
        import torch

        self.torch = torch
        self.scheduler = getattr(diffusers, class_name)(**SD1, **kwargs)
        self.steps = steps
        gen = torch.Generator().manual_seed(0)
        self.latents = torch.randn(shape, generator=gen)
        self.output = 0.1 * torch.randn(shape, generator=gen)
        self.noise_tensor = torch.randn(shape, generator=gen)
        self.module = sys.modules[type(self.scheduler).__module__]

    def fake_randn(self, *args: Any, **kwargs: Any) -> Any:
        return self.noise_tensor

    def __call__(self) -> float:
        scheduler, output = self.scheduler, self.output
        original = getattr(self.module, "randn_tensor", None)
        if original is not None:
            self.module.randn_tensor = self.fake_randn
        try:
            scheduler.set_timesteps(self.steps)
            x = self.latents * scheduler.init_noise_sigma
            start = time.perf_counter()
            for t in scheduler.timesteps:
                scheduler.scale_model_input(x, t)
                x = scheduler.step(output, t, x, return_dict=False)[0]
            return time.perf_counter() - start
        finally:
            if original is not None:
                self.module.randn_tensor = original


def bench_one(name: str, shape: tuple[int, ...], steps: int, repeats: int) -> dict[str, Any]:
    row: dict[str, Any] = {"sampler": name, "size": size_label(shape), "steps": steps}
    ours = SdrtLoop(name, shape, steps)
    row["model_calls_per_step"] = ours.model_calls() / steps
    theirs: DiffusersLoop | None = None
    counterpart = COUNTERPARTS.get(name)
    if counterpart is None:
        row["note"] = "no diffusers counterpart"
    else:
        try:
            theirs = DiffusersLoop(counterpart[0], counterpart[1], shape, steps)
            row["diffusers_class"] = counterpart[0]
        except ImportError as exc:  # DPMSolverSDEScheduler imports torchsde
            reason = str(exc).strip().splitlines()[0]
            row["note"] = f"diffusers {counterpart[0]} unavailable: {reason}"
    sdrt_times: list[float] = []
    diffusers_times: list[float] = []
    # Blocks in the order sdrt, diffusers, diffusers, sdrt, so that load drifting over time hits both alike.
    # Each block starts with an untimed run: right after torch, its idle OpenMP workers still spin and the
    # caches hold torch's tensors, which would bill sdrt for diffusers' aftermath.
    blocks = [(ours, sdrt_times), (theirs, diffusers_times)]
    for loop, times in blocks + blocks[::-1]:
        if loop is None:
            continue
        loop()
        times.extend(loop() / steps * 1e6 for _ in range((repeats + 1) // 2))
    row["sdrt_us_per_step"] = statistics.median(sdrt_times)
    row["sdrt_us_per_step_min"] = min(sdrt_times)
    if diffusers_times:
        row["diffusers_us_per_step"] = statistics.median(diffusers_times)
        row["diffusers_us_per_step_min"] = min(diffusers_times)
        row["speedup"] = row["diffusers_us_per_step"] / row["sdrt_us_per_step"]
    return row


def print_table(rows: list[dict[str, Any]], skipped: dict[str, str]) -> None:
    print(f"{'sampler':14s} {'size':12s} {'sdrt us/step':>13s} {'diffusers us/step':>18s} {'speedup':>8s}")
    for row in rows:
        theirs = f"{row['diffusers_us_per_step']:18.1f}" if "diffusers_us_per_step" in row else f"{'-':>18s}"
        speedup = f"{row['speedup']:7.1f}x" if "speedup" in row else f"{'-':>8s}"
        note = f"  ({row['note']})" if "note" in row else ""
        print(f"{row['sampler']:14s} {row['size']:12s} {row['sdrt_us_per_step']:13.1f} {theirs} {speedup}{note}")
    for name, why in skipped.items():
        print(f"{name:14s} skipped: {why}")


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                            "cpus": os.cpu_count(), "numpy": np.__version__}
    try:
        import diffusers
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), diffusers=diffusers.__version__)
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = os.getloadavg()[0]
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="sampling steps per timed loop (default 20)")
    parser.add_argument("--repeats", type=int, default=7, help="timed loops per figure; the median is kept")
    parser.add_argument("--samplers", nargs="*", help="only these samplers (default: every registered one)")
    parser.add_argument("--json", default="bench/results/schedulers.json", help="where to write the results")
    parser.add_argument("--torch-threads", type=int, help="torch intra-op threads for diffusers (default: torch's)")
    args = parser.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    wanted = args.samplers or sorted(set(REGISTRY) | set(COUNTERPARTS))
    skipped = {name: "not registered in sdrt yet" for name in wanted if name not in REGISTRY}
    env = environment()
    rows = [bench_one(name, shape, args.steps, args.repeats)
            for name in wanted if name in REGISTRY for shape in SIZES]
    print_table(rows, skipped)
    if hasattr(os, "getloadavg"):
        env["load_average_at_end"] = os.getloadavg()[0]
    result = {
        "unit": "microseconds per sampling step: loop time / steps, median (and min) of repeats",
        "steps": args.steps, "repeats": args.repeats, "environment": env, "results": rows, "skipped": skipped,
    }
    write_atomic(args.json, (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
