"""AUTOMATIC1111's sampler and scheduler names mapped to sdrt's, so A1111 clients work unchanged.

A1111 names a sampler by its title ("DPM++ 2M", "Euler a"), which sdrt's samplers carry as `spec.title`, or by
a k-diffusion alias ("k_dpmpp_2m"); a schedule may ride on the name as a suffix ("DPM++ 2M Karras"), and
since A1111 1.9 also comes in the separate `scheduler` field. As in A1111, a suffix wins over the field.
Unlike A1111, which silently falls back to its default sampler, an unknown name is refused (422), since a
silently different sampler gives a different image.
"""

from __future__ import annotations

from ..schedulers import REGISTRY
from .api_errors import invalid

# A1111's aliases (modules/sd_samplers_kdiffusion.py), besides sdrt's own names, which are accepted as well.
A1111_ALIASES = {
    "euler_a": ["k_euler_a", "k_euler_ancestral"], "euler": ["k_euler"], "lms": ["k_lms"], "heun": ["k_heun"],
    "dpm2": ["k_dpm_2"], "dpmpp_2m": ["k_dpmpp_2m"], "dpmpp_sde": ["k_dpmpp_sde"],
    "dpmpp_2m_sde": ["k_dpmpp_2m_sde"], "lcm": ["k_lcm"],
}

# A1111 scheduler labels and names -> sdrt schedules. "Automatic" is the sampler's default, which in sdrt is
# the model's own (normal) spacing for every sampler; A1111's "Uniform" is that spacing too.
SCHEDULERS = {
    "automatic": "normal", "uniform": "normal", "normal": "normal",
    "karras": "karras", "exponential": "exponential",
    "align your steps": "ays", "align_your_steps": "ays", "ays": "ays",
}
SCHEDULER_LABELS = {"Automatic": "normal", "Uniform": "normal", "Karras": "karras", "Exponential": "exponential",
                    "Align Your Steps": "ays"}
SUFFIXES = ("Karras", "Exponential", "Align Your Steps", "Automatic", "Uniform")


def aliases(name: str) -> list[str]:
    return [name, *A1111_ALIASES.get(name, [])]


def _lookup() -> dict[str, str]:
    table = {}
    for name, spec in REGISTRY.items():
        for key in (spec.title, *aliases(name)):
            table[key.lower()] = name
    return table


def sampler_titles() -> str:
    return ", ".join(sorted(spec.title for spec in REGISTRY.values()))


def resolve_sampler(sampler: str, sampler_field: str) -> tuple[str, str | None]:
    """(sdrt sampler name, schedule from a name suffix or None) for an A1111 or sdrt sampler name."""
    text = " ".join(sampler.split())
    schedule = None
    for suffix in SUFFIXES:
        if text.lower().endswith(" " + suffix.lower()):
            text, schedule = text[:-len(suffix) - 1], SCHEDULER_LABELS[suffix]
            break
    name = _lookup().get(text.lower())
    if name is None:
        raise invalid(f"unknown sampler {sampler!r}: choose one of {sampler_titles()}, optionally with a "
                      "Karras or Exponential suffix (GET /sdapi/v1/samplers lists them)", sampler_field)
    return name, schedule


def resolve_schedule(scheduler: str | None, field: str) -> str:
    """sdrt schedule for an A1111 scheduler label or name (None: the default)."""
    if scheduler is None or not scheduler.strip():
        return "normal"
    schedule = SCHEDULERS.get(" ".join(scheduler.split()).lower())
    if schedule is None:
        raise invalid(f"unknown scheduler {scheduler!r}: choose one of {', '.join(SCHEDULER_LABELS)}", field)
    return schedule


def sampler_and_schedule(sampler: str, scheduler: str | None, sampler_field: str,
                         scheduler_field: str) -> tuple[str, str]:
    name, from_suffix = resolve_sampler(sampler, sampler_field)
    from_field = resolve_schedule(scheduler, scheduler_field)  # checked even when a suffix wins
    return name, from_suffix or from_field
