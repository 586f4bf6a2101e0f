"""CLI subcommands, one module each. Modules import only click at import time."""

from .bench import bench
from .build import build
from .demo import demo
from .export import export, tiny_model
from .generate import generate
from .grid import grid
from .interpolate import interpolate
from .quality import quality
from .quantize import quantize
from .samplers import samplers
from .serve import serve

COMMANDS = [samplers, build, export, tiny_model, generate, grid, interpolate, bench, quality, quantize, demo, serve]
