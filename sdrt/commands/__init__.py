"""CLI subcommands, one module each. Modules import only click at import time."""

from .samplers import samplers

COMMANDS = [samplers]
