"""CLI subcommands, one module each. Modules import only click at import time."""

from .build import build
from .samplers import samplers

COMMANDS = [samplers, build]
