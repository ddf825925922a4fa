"""awch-scale: matrix-free analysis of SGD noise covariance versus loss curvature."""

from . import _torchvision_compat  # noqa: F401  (must run before torchvision/BackPACK import)

__version__ = "0.1.0"

from .analysis import analyze_checkpoint  # noqa: E402
from .recipe import Recipe, load_recipe  # noqa: E402

__all__ = ["Recipe", "analyze_checkpoint", "load_recipe", "__version__"]
