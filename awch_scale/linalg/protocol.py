"""What the solvers of this layer need of an operator (structural typing, no import upward).

Every operator of :mod:`awch_scale.model.operators` satisfies it; so does any object with
these members, e.g. a wrapped dense matrix in the tests.
"""

from __future__ import annotations

from typing import Protocol

import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor


class Operator(Protocol):
    """A symmetric D x D operator applied to blocks of vectors.

    Attributes:
        shape: (D, D).
        device: where the products run and the solver keeps its basis.
        compute_dtype: dtype the products are evaluated in (float32 or float64).
        n_products: single-vector products applied so far.
    """

    shape: tuple[int, int]
    device: torch.device
    compute_dtype: torch.dtype
    n_products: int

    def matmat(self, V: Tensor) -> Tensor:
        """A V for V of shape (D, m) or (D,); float64 on ``device``."""

    def to_scipy(self) -> LinearOperator:
        """The operator as a :class:`scipy.sparse.linalg.LinearOperator` (float64, host)."""
