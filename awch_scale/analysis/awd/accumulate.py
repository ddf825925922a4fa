"""Float64 accumulators of k x k second-moment matrices, full or diagonal only."""

from __future__ import annotations

import torch
from torch import Tensor


class MomentSum:
    """Running sum of X^T Y (k x k), or only its diagonal, in float64.

    Args:
        k: matrix size.
        full: keep the whole matrix (False: the diagonal only, O(k) memory).
        device: where the sum lives.
    """

    def __init__(self, k: int, *, full: bool, device: torch.device):
        self.full = full
        shape = (k, k) if full else (k,)
        self.value = torch.zeros(shape, dtype=torch.float64, device=device)

    def add(self, X: Tensor, Y: Tensor | None = None, *, weight: Tensor | None = None,
            symmetrise: bool = False) -> None:
        """Add sum_n w_n x_n y_n^T (y = x when Y is None; w = 1 when weight is None).

        With ``symmetrise`` the added term is sum_n w_n (x_n y_n^T + y_n x_n^T).
        X, Y: (n, k), cast to float64.
        """
        X = X.to(torch.float64)
        Y = X if Y is None else Y.to(torch.float64)
        Xw = X if weight is None else X * weight.to(torch.float64)[:, None]
        if self.full:
            term = Xw.T @ Y
            self.value += term + term.T if symmetrise else term
        else:
            d = (Xw * Y).sum(0)
            self.value += 2.0 * d if symmetrise else d

    def add_matrix(self, M: Tensor) -> None:
        """Add a k x k matrix (only its diagonal when the accumulator is diagonal)."""
        M = M.to(torch.float64)
        self.value += M if self.full else torch.diagonal(M)

    def diag(self) -> Tensor:
        """The diagonal of the running sum."""
        return torch.diagonal(self.value) if self.full else self.value

    def result(self, scale: float, *, full: bool | None = None) -> Tensor:
        """scale * sum, as the full matrix or its diagonal (``full`` defaults to self.full)."""
        full = self.full if full is None else full
        if full and not self.full:
            raise ValueError("this accumulator kept only the diagonal")
        return scale * (self.value if full else self.diag())
