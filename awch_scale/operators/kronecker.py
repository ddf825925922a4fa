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

    The operator owns the one cache of the per-sample z-space quantities of the target:
    ``layer`` (a :class:`~awch_scale.awd.target.TargetLayer`: the inputs a_i and l_i as a
    function of z) and, while they fit in ``cache_bytes``, the Q_i. The per-sample
    projections (:func:`awch_scale.per_sample.projected_gradients` with ``layer=``) and
    the AWD second moments (:class:`awch_scale.awd.moments.KronMoments` with
    ``q_source=``) reuse them instead of recomputing.

    Args:
        problem: a block problem whose block is one bias-free Linear weight.
        max_vectors: columns per product (bounds the (chunk, d_out, m) temporaries).
        cache_bytes: memory allowed for the cached Q_i (N * d_out^2 entries; with a
            ``world`` of several ranks, only this rank's chunks are cached).
        world: a :class:`~awch_scale.distributed.World`; products then sum this rank's
            chunks and all-reduce (see :class:`BlockOperator`).
        layer: an existing TargetLayer of ``problem`` to share (built when None).

    Raises:
        ValueError: the block is not one bias-free Linear weight.
    """

    def __init__(self, problem: BlockProblem, *, max_vectors: int = 256,
                 cache_bytes: int = 1 << 30, world=None, layer=None):
        super().__init__(problem, max_vectors=max_vectors)
        from ..awd.target import TargetLayer

        self.world = world
        self.layer = layer if layer is not None else TargetLayer(problem)
        d_out = self.layer.d_out
        itemsize = torch.empty((), dtype=problem.dtype).element_size()
        own = problem.slices() if world is None else world.shard(problem.slices())
        n_own = sum(len(range(problem.N)[c]) for c in own)
        self.cached = n_own * d_out * d_out * itemsize <= cache_bytes
        self._q: dict[int, Tensor] = {}
        if self.cached:
            for chunk in own:
                self._q[chunk.start] = self._q_chunk(chunk)

    def _q_chunk(self, chunk: slice) -> Tensor:
        a, z, x, y = self.layer.index(range(self.problem.N)[chunk])
        return self.layer.q_full(z, x, y)

    def q_rows(self, idx) -> Tensor | None:
        """The cached Q_i (n, d_out, d_out) of the samples ``idx``, or None when any of
        them is not cached (cache off, or another rank's chunk)."""
        if not self.cached:
            return None
        cs = self.problem.chunk_size
        i = torch.as_tensor(idx, dtype=torch.long).cpu()
        starts = (i // cs) * cs
        if not all(int(s) in self._q for s in starts.unique()):
            return None
        if not bool((starts[1:] >= starts[:-1]).all()):  # unsorted: gather row by row
            return torch.stack([self._q[int(s)][int(j - s)] for s, j in zip(starts, i,
                                                                           strict=True)])
        parts = [self._q[int(s)][(i[starts == s] - s).to(self._q[int(s)].device)]
                 for s in starts.unique_consecutive()]
        Q = torch.cat(parts)
        return Q

    def _chunk_matmat(self, chunk: slice, x: Tensor, y: Tensor, V: Tensor) -> Tensor:
        lay = self.layer
        d_out, d_in, m = lay.d_out, lay.d_in, V.shape[1]
        a = lay.A[chunk]
        # U_i = X a_i as one GEMM: (n, d_in) @ (d_in, d_out * m)
        Vt = V.view(d_out, d_in, m).permute(1, 0, 2).reshape(d_in, d_out * m)
        U = (a @ Vt).view(-1, d_out, m)
        if self.cached:
            R = torch.bmm(self._q[chunk.start], U)
        else:
            R = self._uncached_times(a, x, y, U)
        # sum_i R_i a_i^T as one GEMM: (d_out * m, n) @ (n, d_in)
        out = R.permute(1, 2, 0).reshape(d_out * m, -1) @ a
        return out.view(d_out, m, d_in).permute(0, 2, 1).reshape(d_out * d_in, m)

    def _uncached_times(self, a: Tensor, x: Tensor, y: Tensor, U: Tensor) -> Tensor:
        """Q_i U_i when the Q_i are not cached: z-space Hessian-vector products."""
        return self.layer.q_times(a @ self.layer.W.T, x, y, U)
