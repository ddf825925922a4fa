"""Hessian of a bias-free Linear target from its exact per-sample Kronecker structure.

The loss of sample i depends on the target weight W (d_out x d_in) only through the
layer's output z_i = W a_i, so its Hessian with respect to w = vec(W) (row-major) is
exactly

    h_i = Q_i (x) a_i a_i^T,        Q_i = d^2 l_i / dz^2  (d_out x d_out),

and H X = (1/N) sum_i Q_i X a_i a_i^T for X = mat(v). With the a_i and Q_i of a chunk
at hand, a product with m vectors is two contractions and one batched matrix product:
U_i = X a_i, R_i = Q_i U_i, H X = (1/N) sum_i R_i a_i^T. Cost O(N m (2 D + d_out^2)); no
network pass and no D x D array. The Q_i come from ``torch.func.hessian`` of the loss
as a function of z (through the layers after the target) and are cached while
N * d_out^2 entries fit in ``cache_bytes``; otherwise Q_i U_i is recomputed in every
product by z-space Hessian-vector products.

The matrix is the same as :class:`~awch_scale.operators.HessianOperator`'s; the tests
hold one against the other and against a dense ``torch.func.hessian``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..problem import BlockProblem
from .base import BlockOperator


class KroneckerHessianOperator(BlockOperator):
    """H = (1/N) sum_i Q_i (x) a_i a_i^T for a bias-free ``nn.Linear`` target.

    Args:
        problem: a block problem whose block is one bias-free Linear weight.
        max_vectors: columns per product (bounds the (chunk, d_out, m) temporaries).
        cache_bytes: memory allowed for the cached Q_i (N * d_out^2 entries).

    Raises:
        ValueError: the block is not one bias-free Linear weight.
    """

    def __init__(self, problem: BlockProblem, *, max_vectors: int = 256,
                 cache_bytes: int = 1 << 30):
        super().__init__(problem, max_vectors=max_vectors)
        from ..awd.target import TargetLayer

        self.layer = TargetLayer(problem)
        d_out = self.layer.d_out
        itemsize = torch.empty((), dtype=problem.dtype).element_size()
        self.cached = problem.N * d_out * d_out * itemsize <= cache_bytes
        self._q: dict[int, Tensor] = {}
        if self.cached:
            for chunk in problem.slices():
                self._q[chunk.start] = self._q_chunk(chunk)

    def _q_chunk(self, chunk: slice) -> Tensor:
        a, z, x, y = self.layer.index(range(self.problem.N)[chunk])
        return self.layer.q_full(z, x, y)

    def _chunk_matmat(self, chunk: slice, x: Tensor, y: Tensor, V: Tensor) -> Tensor:
        lay = self.layer
        d_out, d_in, m = lay.d_out, lay.d_in, V.shape[1]
        a = lay.A[chunk]
        U = torch.einsum("ni,oim->nom", a, V.view(d_out, d_in, m))  # U_i = X a_i
        if self.cached:
            R = torch.bmm(self._q[chunk.start], U)
        else:
            R = self._uncached_times(a, x, y, U)
        return torch.einsum("nom,ni->oim", R, a).reshape(d_out * d_in, m)

    def _uncached_times(self, a: Tensor, x: Tensor, y: Tensor, U: Tensor) -> Tensor:
        """Q_i U_i when the Q_i are not cached: z-space Hessian-vector products."""
        return self.layer.q_times(a @ self.layer.W.T, x, y, U)
