"""Does prompt weighting steer the built-in tiny model? Counts over seeds, read by its pixel judge.

    python bench/prompt_weighting.py [--bundle DIR] [--seeds 20] [--json out.json]

Two experiments, each at weights 0.6, 1.0 and 1.5 of one colour word (A1111 syntax, e.g. "(red:1.5)"):
- plain: the model's own caption ("a red circle on a blue background") with its colour weighted: how often
  the judge reads the foreground as that colour;
- conflict: two foreground colours ("a (red:W) green circle on a blue background"): how often the weighted
  colour wins against the other one (the judge's foreground colour is the weighted one / the other one).
Every configuration runs the same seeds (one batch per prompt), so the weights are the only difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdrt.tinymodel.adherence import judge  # noqa: E402
from sdrt.tinymodel.builtin import DEFAULT_CFG  # noqa: E402

WEIGHTS = (0.6, 1.0, 1.5)
PLAIN = (("red", "circle", "blue"), ("yellow", "triangle", "black"), ("green", "square", "purple"),
         ("cyan", "cross", "white"))
CONFLICT = (("red", "green", "circle", "blue"), ("yellow", "purple", "square", "black"),
            ("white", "red", "triangle", "green"), ("blue", "cyan", "cross", "yellow"))


def colours(pipe, prompt: str, seeds: int, steps: int) -> list[str | None]:
    from sdrt.runtime import GenerationRequest

    result = pipe.generate(GenerationRequest(prompt, steps=steps, cfg=DEFAULT_CFG, seed=0, batch=seeds))
    return [judge(image).colour for image in result.images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="default: the built-in model's cached bundle")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from sdrt.runtime import Pipeline

    if args.bundle is None:
        from sdrt.tools.demo import bundle_for_builtin

        args.bundle = bundle_for_builtin(say=lambda m: print(m, file=sys.stderr))
    pipe = Pipeline.load(str(args.bundle))
    results: dict[str, list] = {"plain": [], "conflict": []}
    print(f"{args.seeds} seeds, {args.steps} steps euler, cfg {DEFAULT_CFG}")
    print("plain: the caption's colour weighted; share of images whose foreground is that colour")
    for colour, shape, background in PLAIN:
        row = {}
        for weight in WEIGHTS:
            prompt = f"a ({colour}:{weight}) {shape} on a {background} background"
            row[weight] = sum(c == colour for c in colours(pipe, prompt, args.seeds, args.steps))
        results["plain"].append({"colour": colour, "shape": shape, "background": background, "wins": row})
        print(f"  {colour} {shape} on {background}: " + ", ".join(f"x{w}: {n}/{args.seeds}" for w, n in row.items()))
    print("conflict: 'a (A:W) B shape on a C background'; images whose foreground is A / B")
    for a, b, shape, background in CONFLICT:
        row = {}
        for weight in WEIGHTS:
            prompt = f"a ({a}:{weight}) {b} {shape} on a {background} background"
            found = colours(pipe, prompt, args.seeds, args.steps)
            row[weight] = [sum(c == a for c in found), sum(c == b for c in found)]
        results["conflict"].append({"weighted": a, "other": b, "shape": shape, "background": background,
                                    "wins": row})
        print(f"  ({a}:W) {b} {shape} on {background}: "
              + ", ".join(f"x{w}: {n[0]}/{n[1]}" for w, n in row.items()))
    totals = {w: sum(r["wins"][w] for r in results["plain"]) for w in WEIGHTS}
    conflict = {w: [sum(r["wins"][w][i] for r in results["conflict"]) for i in (0, 1)] for w in WEIGHTS}
    print("totals plain: " + ", ".join(f"x{w}: {n}/{args.seeds * len(PLAIN)}" for w, n in totals.items()))
    print("totals conflict (weighted/other): " + ", ".join(f"x{w}: {n[0]}/{n[1]}" for w, n in conflict.items()))
    if args.json:
        args.json.write_text(json.dumps({"seeds": args.seeds, "steps": args.steps, "cfg": DEFAULT_CFG,
                                         **results}, indent=1))


if __name__ == "__main__":
    main()
