"""CLI subcommands, one module each. Modules import only click at import time."""

from .build import build
from .export import export, tiny_model
from .samplers import samplers

COMMANDS = [samplers, build, export, tiny_model]
