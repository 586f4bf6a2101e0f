"""Prompt adherence and diversity of the built-in tiny model, measured through sdrt's runtime on its bundle.

    python bench/tinymodel_quality.py [--bundle DIR] [--prompts 25] [--seeds 8] [--json out.json]

Each configuration generates prompts x seeds images (200 by default) for prompts drawn at random (fixed seed)
from every (shape, colour, background) combination, and reports:
- adherence: the fraction of images whose shape, colour and background the pixel judge
  (sdrt.tinymodel.adherence) reads as the prompt says, plus each part alone;
- diversity: mean pairwise RMS pixel distance (0..1) between the images of one prompt, averaged over prompts.
Tables: every sampler at 20 steps; the default sampler against steps (5, 10, 20, 50); against TSR temperature
(0.5, 0.8, 1, 1.25); against guidance scale. Ground-truth renders of the same prompts validate the judge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdrt.tinymodel.adherence import adherence, mean_pairwise_distance  # noqa: E402
from sdrt.tinymodel.builtin import DEFAULT_CFG  # noqa: E402
from sdrt.tinymodel.shapes import all_prompts, caption_for, make_dataset, random_scene, render  # noqa: E402

DEFAULT_SAMPLER = "euler"
# LCM is left out: it needs a consistency-distilled model, which the built-in one is not.
SAMPLERS = ("euler", "euler_a", "heun", "dpm2", "lms", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "unipc", "ddim",
            "ddpm", "plms")
STEPS = (5, 10, 20, 50)
TEMPERATURES = (0.5, 0.8, 1.0, 1.25)
GUIDANCE = (1.0, 3.0, 5.0, 7.5)


def choose_prompts(count: int, seed: int) -> list[tuple[str, str, str]]:
    combos = all_prompts()
    order = np.random.default_rng(seed).permutation(len(combos))[:count]
    return [combos[i] for i in order]


def ground_truth(prompts: list[tuple[str, str, str]], seeds: int, seed: int) -> dict[str, float]:
    """The judge on rendered scenes of the same prompts: its accuracy, and the data's own diversity."""
    rng = np.random.default_rng(seed)
    per_prompt = [[render(random_scene(rng, s, c, b)) for _ in range(seeds)] for s, c, b in prompts]
    images = [im for group in per_prompt for im in group]
    targets = [p for p in prompts for _ in range(seeds)]
    score = adherence(images, targets).as_dict()
    score["diversity"] = float(np.mean([mean_pairwise_distance(g) for g in per_prompt]))
    return score


def evaluate(pipe, prompts: list[tuple[str, str, str]], seeds: int, **request_args) -> dict[str, float]:
    from sdrt.runtime import GenerationRequest

    started = time.perf_counter()
    images, targets, diversity = [], [], []
    for n, (shape, colour, background) in enumerate(prompts):
        request = GenerationRequest(prompt=caption_for(shape, colour, background), seed=1000 * n, batch=seeds,
                                    **request_args)
        result = pipe.generate(request)
        images += result.images
        targets += [(shape, colour, background)] * seeds
        if seeds > 1:
            diversity.append(mean_pairwise_distance(result.images))
    score = adherence(images, targets).as_dict()
    score["diversity"] = float(np.mean(diversity)) if diversity else float("nan")
    score["seconds"] = time.perf_counter() - started
    return score


def table(title: str, key: str, rows: list[tuple[object, dict[str, float]]]) -> str:
    lines = [f"\n{title}", f"| {key} | adherence | shape | colour | background | diversity | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['all']:.1%} | {r['shape']:.1%} | {r['colour']:.1%} | {r['background']:.1%} "
                     f"| {r['diversity']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="default: the built-in model's cached bundle")
    parser.add_argument("--prompts", type=int, default=25)
    parser.add_argument("--seeds", type=int, default=8, help="images per prompt")
    parser.add_argument("--cfg", type=float, default=DEFAULT_CFG)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tables", default="samplers,steps,temperature,guidance")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from sdrt.runtime import Pipeline

    if args.bundle is None:
        from sdrt.tools.demo import bundle_for_builtin

        args.bundle = bundle_for_builtin(say=lambda m: print(m, file=sys.stderr))
    pipe = Pipeline.load(str(args.bundle), backend="ort-cpu", threads=args.threads)
    prompts = choose_prompts(args.prompts, seed=7)
    wanted = set(args.tables.split(","))
    results: dict[str, object] = {"bundle": str(args.bundle), "prompts": args.prompts, "seeds": args.seeds,
                                  "images_per_configuration": args.prompts * args.seeds, "cfg": args.cfg,
                                  "default_sampler": DEFAULT_SAMPLER}
    base = dict(steps=20, sampler=DEFAULT_SAMPLER, cfg=args.cfg)

    gt = ground_truth(prompts, args.seeds, seed=11)
    results["ground_truth"] = gt
    print(f"judge on ground-truth renders of the same prompts: adherence {gt['all']:.1%}, "
          f"diversity {gt['diversity']:.3f}")
    sections = [
        ("samplers", "sampler", f"Per sampler, 20 steps, cfg {args.cfg}",
         [(s, {**base, "sampler": s}) for s in SAMPLERS]),
        ("steps", "steps", f"{DEFAULT_SAMPLER} against steps, cfg {args.cfg}",
         [(n, {**base, "steps": n}) for n in STEPS]),
        ("temperature", "T (TSR)", f"{DEFAULT_SAMPLER}, 20 steps, cfg {args.cfg}, against temperature",
         [(t, {**base, "temperature": t, "temperature_method": "tsr"}) for t in TEMPERATURES]),
        ("guidance", "cfg", f"{DEFAULT_SAMPLER}, 20 steps, against guidance scale",
         [(g, {**base, "cfg": g}) for g in GUIDANCE]),
    ]
    for key, column, title, configs in sections:
        if key not in wanted:
            continue
        rows = []
        for name, request_args in configs:
            rows.append((name, evaluate(pipe, prompts, args.seeds, **request_args)))
            print(f"  {key} {name}: {rows[-1][1]['all']:.1%} ({rows[-1][1]['seconds']:.1f}s)", file=sys.stderr)
        results[key] = {str(name): r for name, r in rows}
        print(table(title, column, rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
