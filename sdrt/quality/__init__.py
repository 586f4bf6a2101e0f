"""The quality yardstick: how far a cheaper mode (bf16, int8, a tiny VAE, feature reuse) moves the images
from the exact fp32 ones, and the one gate every non-exact mode must pass (docs/quality.md)."""

from .gate import GATE, Gate, QualitySummary, Verdict, summarise, verdict
from .metrics import ImageComparison, compare_images, pixel_difference, psnr, ssim

__all__ = ["GATE", "Gate", "ImageComparison", "QualitySummary", "Verdict", "compare_images", "pixel_difference",
           "psnr", "ssim", "summarise", "verdict"]
