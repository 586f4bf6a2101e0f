"""Whether this CPU computes bf16 natively: the fact that makes bf16 sdrt's CPU default (docs/quality.md).

OpenVINO runs INFERENCE_PRECISION_HINT bf16 natively with AVX512_BF16 (Cooper Lake, Zen 4 and later) or AMX
(Sapphire Rapids and later). Elsewhere it would emulate or silently fall back to f32, which buys nothing, so
those CPUs keep exact fp32. Read from the kernel's CPU flags (/proc/cpuinfo), the same source `lscpu` uses.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

# Linux flag -> the name users know, strongest first
BF16_FLAGS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512_BF16"))


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The first processor's flags; empty where /proc/cpuinfo is missing (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(flags: Iterable[str] | None = None) -> str | None:
    """"AMX" or "AVX512_BF16" when the CPU has native bf16 arithmetic, else None."""
    have = cpu_flags() if flags is None else frozenset(flags)
    return next((name for flag, name in BF16_FLAGS if flag in have), None)
