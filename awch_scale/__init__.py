"""awch-scale: matrix-free analysis of SGD noise covariance versus loss curvature.

The library's entry points load on first use (PEP 562), so that ``import awch_scale``
and the command line's ``--help`` do not import torch: :func:`analyze_checkpoint`,
:class:`Recipe`, :func:`load_recipe`.
"""

from awch_scale import _torchvision_compat  # noqa: F401  (installs a finder; imports no torch)
from awch_scale._version import __version__

__all__ = ["Recipe", "analyze_checkpoint", "load_recipe", "__version__"]

_LAZY = {"analyze_checkpoint": "awch_scale.analysis.checkpoint",
         "Recipe": "awch_scale.run.recipe", "load_recipe": "awch_scale.run.recipe"}


def __getattr__(name: str):
    """Import a public name of :data:`__all__` on first use."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'awch_scale' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the lazy ones included."""
    return sorted({*globals(), *__all__})
