"""Matrix-free D x D operators over a parameter block (curvlinops-style).

:class:`BlockOperator` streams the analysis set and averages exactly over it;
subclasses implement only the summed product of one chunk with a (D, m) block of
vectors. :meth:`BlockOperator.to_scipy` is the single bridge to
``scipy.sparse.linalg`` (``eigsh``). Sums, differences and scalings of operators
(:mod:`.algebra`) are operators too: C = (1/B)(M - g g^T), H_p = M - H.
"""

from .algebra import IdentityOperator, LinearCombination, LowRankOperator, OperatorAlgebra
from .base import BlockOperator
from .gradients import CovarianceOperator, SecondMomentOperator
from .hessian import HessianOperator
from .kronecker import KroneckerHessianOperator

__all__ = [
    "BlockOperator", "CovarianceOperator", "HessianOperator", "IdentityOperator",
    "KroneckerHessianOperator", "LinearCombination", "LowRankOperator", "OperatorAlgebra",
    "SecondMomentOperator",
]
