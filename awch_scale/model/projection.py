"""Projections of rank-one weight-space vectors onto the Hessian eigenbasis V.

Every per-sample D-vector of the AWD analysis of a Linear layer is an outer product
vec(u b^T) (row-major, u in R^d_out, b in R^d_in): the gradient vec(delta a^T), Term I
vec(Q W da a^T), Term II vec(delta da^T), the local eigenvectors vec(q a^T)/|a|. With V
reshaped to Vr (d_out, d_in, k),

    V^T vec(u b^T) = sum_ij u_i b_j Vr[i, j, :] = Y(b)^T u,   Y(b) = Vr . b  (d_out, k),

so no D-vector per sample is needed: :meth:`RankOneBasis.lift` forms Y(b) for a batch
((n, d_out, k) values), or, when d_in <= k, the outer products themselves ((n, D)
values) are multiplied by V; :meth:`RankOneBasis.project` picks the smaller.
"""

from __future__ import annotations

import torch
from torch import Tensor


class RankOneBasis:
    """V (D, k) viewed as Vr (d_out, d_in, k), in the problem's dtype.

    Args:
        V: the basis, shape (D, k) with D = d_out * d_in (row-major blocks).
        d_out, d_in: the target weight's shape.
        dtype, device: where the products run.
    """

    def __init__(self, V: Tensor, d_out: int, d_in: int, *, dtype: torch.dtype,
                 device: torch.device):
        if V.ndim != 2 or V.shape[0] != d_out * d_in:
            raise ValueError(f"V has shape {tuple(V.shape)}; expected ({d_out * d_in}, k)")
        self.d_out, self.d_in, self.k = d_out, d_in, int(V.shape[1])
        self.V = V.to(device=device, dtype=dtype)
        self._lift_matrix: Tensor | None = None

    @property
    def lift_matrix(self) -> Tensor:
        """Vr permuted to (d_in, d_out * k), so that b @ it = Y(b) flattened (built once)."""
        if self._lift_matrix is None:
            Vr = self.V.view(self.d_out, self.d_in, self.k)
            self._lift_matrix = Vr.permute(1, 0, 2).reshape(self.d_in, self.d_out * self.k)
        return self._lift_matrix

    def lift(self, b: Tensor) -> Tensor:
        """Y(b) = Vr . b for b (n, d_in): (n, d_out, k), Y[n, i, :] = sum_j Vr[i, j, :] b_j."""
        return (b @ self.lift_matrix).view(b.shape[0], self.d_out, self.k)

    @property
    def outer_is_cheaper(self) -> bool:
        """Whether the (n, D) outer products are smaller than Y(b) (d_in <= k)."""
        return self.d_in <= self.k

    def project(self, u: Tensor, b: Tensor) -> Tensor:
        """V^T vec(u_n b_n^T) for a batch, (n, k)."""
        if self.outer_is_cheaper:
            return (u[:, :, None] * b[:, None, :]).reshape(u.shape[0], -1) @ self.V
        return torch.einsum("ni,nik->nk", u, self.lift(b))

    def project_many(self, b: Tensor, *us: Tensor) -> list[Tensor]:
        """[V^T vec(u_n b_n^T) for u in us], sharing Y(b) between them."""
        if self.outer_is_cheaper:
            return [self.project(u, b) for u in us]
        Y = self.lift(b)
        return [torch.einsum("ni,nik->nk", u, Y) for u in us]

    def elements_per_sample(self) -> int:
        """Values held per sample by one :meth:`project` (sizes the chunks)."""
        return self.d_out * min(self.d_in, self.k)
