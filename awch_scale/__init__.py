"""awch-scale: matrix-free analysis of SGD noise covariance versus loss curvature."""

from . import _torchvision_compat  # noqa: F401  (must run before torchvision/BackPACK import)

__version__ = "0.1.0"
