"""Matrix-free D x D operators over a parameter block (curvlinops-style).

:class:`BlockOperator` streams the analysis set and averages exactly over it;
subclasses implement only the summed product of one chunk with a (D, m) block of
vectors. :meth:`BlockOperator.to_scipy` is the single bridge to
``scipy.sparse.linalg`` (``eigsh``). Sums, differences and scalings of operators
(:mod:`.algebra`) are operators too: C = (1/B)(M - g g^T), H_p = M - H.
"""

from awch_scale.model.operators.algebra import (
    IdentityOperator,
    LinearCombination,
    LowRankOperator,
    OperatorAlgebra,
)
from awch_scale.model.operators.base import BlockOperator
from awch_scale.model.operators.gradients import CovarianceOperator, SecondMomentOperator
from awch_scale.model.operators.hessian import HessianOperator
from awch_scale.model.operators.kronecker import KroneckerHessianOperator

__all__ = [
    "BlockOperator", "CovarianceOperator", "HessianOperator", "IdentityOperator",
    "KroneckerHessianOperator", "LinearCombination", "LowRankOperator", "OperatorAlgebra",
    "SecondMomentOperator",
]
