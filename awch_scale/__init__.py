"""awch-scale: matrix-free analysis of SGD noise covariance versus loss curvature."""

from awch_scale import _torchvision_compat  # noqa: F401  (before torchvision/BackPACK import)
from awch_scale._version import __version__
from awch_scale.analysis.checkpoint import analyze_checkpoint
from awch_scale.run.recipe import Recipe, load_recipe

__all__ = ["Recipe", "analyze_checkpoint", "load_recipe", "__version__"]
