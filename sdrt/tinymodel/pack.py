"""`python -m sdrt.tinymodel.pack MODEL_DIR`: copy a trained diffusers folder into the package as the built-in
model (fp16 weights, configs, CLIP merge list). The model card is written by hand beside them."""

from __future__ import annotations

import argparse
from pathlib import Path

from .builtin import DATA_DIR, pack


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="diffusers folder written by sdrt.tinymodel.train (OUT/model)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    sizes = pack(args.model, args.data_dir)
    for name, size in sizes.items():
        print(f"{size / 1e6:8.2f} MB  {name}")
    print(f"{sum(sizes.values()) / 1e6:8.2f} MB  total in {args.data_dir}")


if __name__ == "__main__":
    main()
