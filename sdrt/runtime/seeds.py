"""Seed rules shared by every front end (CLI, HTTP, library): the range, "random", and the seeds a run uses.

They live in the runtime, not in the CLI, because the HTTP server and `GenerationRequest` apply the same rules:
a seed sdrt reports (in a PNG, `all_seeds`, an OpenAI `seed`) must be one it accepts back.
"""

from __future__ import annotations

import secrets

from ..errors import UserError

MAX_SEED = 2**64 - 1  # 64-bit seeds, as AUTOMATIC1111 and torch take them, so a PNG's seed re-makes it there too
RANDOM_SEED = -1  # what AUTOMATIC1111 users type for "random"


def resolve_seed(seed: int | None, name: str = "--seed") -> int:
    """None or -1: a random seed (printed, and recorded in the PNGs like any other); else 0..2**64-1."""
    if seed is None or seed == RANDOM_SEED:
        return secrets.randbelow(2**32)
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{name} {seed} is out of range: use 0..{MAX_SEED}, or -1 for a random seed")
    return seed


def check_seed_count(seed: int, count: int, name: str = "seed") -> None:
    """Image i of a run uses seed + i; refuse a run whose last seed would pass MAX_SEED, so that every seed
    reported is one sdrt accepts back (rather than wrapping, which would repeat the pictures of seed 0...)."""
    last = seed + count - 1
    if last > MAX_SEED:
        raise UserError(f"{name} {seed} with {count} images runs past the largest seed {MAX_SEED} (image i uses "
                        f"seed + i): use a {name} of at most {MAX_SEED - count + 1}")
