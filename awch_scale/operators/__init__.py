"""Matrix-free D x D operators over a parameter block (curvlinops-style).

:class:`BlockOperator` streams the analysis set and averages exactly over it;
subclasses implement only the summed product of one chunk with a (D, m) block of
vectors. :meth:`BlockOperator.to_scipy` is the single bridge to
``scipy.sparse.linalg`` (``eigsh``).
"""

from .base import BlockOperator
from .hessian import HessianOperator
from .kronecker import KroneckerHessianOperator

__all__ = ["BlockOperator", "HessianOperator", "KroneckerHessianOperator"]
