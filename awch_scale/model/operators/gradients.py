"""Gradient second moment M and noise covariance C as matrix-free operators (SPEC 3, 6).

    M v = (1/N) sum_i g_i (g_i^T v),        C = (1/B) (M - g g^T),   g = (1/N) sum_i g_i.

Two ways to a chunk's sum_i g_i (g_i^T V):

- any block: the chunk's per-sample gradients G (n, D) by ``torch.func.vmap(grad)``
  (:func:`awch_scale.model.per_sample.chunk_gradients`), then G^T (G V). The gradients are
  cached while N * D entries fit in ``cache_bytes``, otherwise recomputed per product.
- a bias-free Linear target (W: d_out x d_in): g_i = vec(delta_i a_i^T) (row-major),
  delta_i = d l_i / d z_i, so with X = mat(v), g_i^T v = delta_i^T X a_i and

      M X = (1/N) sum_i delta_i (delta_i^T X a_i) a_i^T,

  two contractions per product and no per-sample D-vector. The delta_i (N x d_out)
  are computed once (:meth:`awch_scale.model.target.TargetLayer.deltas`).

H_p = M - H (the SGD-Dynamics decomposition H = M - H_p) is ``M - hess`` with the
operator algebra of :mod:`.algebra`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from awch_scale.model.operators.algebra import LinearCombination, LowRankOperator
from awch_scale.model.operators.base import BlockOperator
from awch_scale.model.problem import BlockProblem
from awch_scale.world import SINGLE, World


class SecondMomentOperator(BlockOperator):
    """M = (1/N) sum_i g_i g_i^T over the analysis set (SPEC 3 ``second_moment``).

    Args:
        problem: the block problem.
        structure: ``linear`` (rank-one per-sample gradients of a bias-free Linear
            target from its deltas), ``generic`` (vmapped per-sample gradients), or
            ``auto`` (``linear`` when the block is one bias-free Linear weight).
        max_vectors: columns per product.
        cache_bytes: memory allowed for cached per-sample gradients (``generic``).
        world: a :class:`~awch_scale.world.World`; products and the mean gradient
            then sum this rank's chunks and all-reduce, and only this rank's deltas or
            gradients are computed and cached.
        layer: an existing :class:`~awch_scale.model.target.TargetLayer` of ``problem``
            to share (``linear``; e.g. the Kronecker Hessian's ``layer``), built when None.

    Raises:
        ValueError: ``linear`` on a block that is not one bias-free Linear weight.
    """

    def __init__(self, problem: BlockProblem, *, structure: str = "auto",
                 max_vectors: int = 256, cache_bytes: int = 1 << 28,
                 world: World | None = SINGLE, layer=None):
        super().__init__(problem, max_vectors=max_vectors, world=world)
        own = self.world.shard(problem.slices())
        if structure == "auto":
            structure = "linear" if problem.linear_name is not None else "generic"
        if structure not in ("linear", "generic"):
            raise ValueError(f"unknown structure {structure!r}; allowed: auto, linear, generic")
        self.structure = structure
        self._grads: dict[int, Tensor] = {}
        itemsize = torch.empty((), dtype=problem.dtype).element_size()
        if structure == "linear":
            from awch_scale.model.target import TargetLayer

            self.layer = layer if layer is not None else TargetLayer(problem)
            # (N, d_out): this rank's rows (another rank's are never read here)
            self.deltas = torch.zeros(problem.N, self.layer.d_out, dtype=problem.dtype,
                                      device=self.device)
            for chunk in own:
                a, z, x, y = self.layer.index(range(problem.N)[chunk])
                self.deltas[chunk] = self.layer.deltas(z, x, y)
        else:
            n_own = sum(len(range(problem.N)[c]) for c in own)
            self.cached = n_own * problem.D * itemsize <= cache_bytes
            if self.cached:
                for chunk in own:
                    self._grads[chunk.start] = self._chunk_gradients(chunk)

    def _chunk_gradients(self, chunk: slice) -> Tensor:
        from awch_scale.model.per_sample import chunk_gradients

        p = self.problem
        return chunk_gradients(p, p.features[chunk], p.labels[chunk])

    def _chunk_matmat(self, chunk: slice, x: Tensor, y: Tensor, V: Tensor) -> Tensor:
        if self.structure == "linear":
            lay = self.layer
            a, d = lay.A[chunk], self.deltas[chunk]
            # Pairwise contractions only, as in the Kronecker operator: a three-operand
            # einsum may be planned through an (n, d_out, d_in) intermediate (2 GB for a
            # chunk of 500 at d = 1000). Temporaries here are (n, d_out, m).
            U = torch.einsum("ni,oim->nom", a, V.view(lay.d_out, lay.d_in, V.shape[1]))
            s = (d[:, :, None] * U).sum(1)  # g_i^T v = delta_i^T X a_i, (n, m)
            R = d[:, :, None] * s[:, None, :]  # delta_i (g_i^T v), (n, d_out, m)
            return torch.einsum("nom,ni->oim", R, a).reshape(V.shape)
        G = self._grads.get(chunk.start)
        if G is None:
            G = self._chunk_gradients(chunk)
        return G.T @ (G @ V)

    def sample_gram(self) -> Tensor | None:
        """K = (1/N) G G^T, the N x N Gram matrix of the per-sample gradients (float64, on
        the device), or None when the gradients are neither structured nor cached.

        M = (1/N) G^T G and K share their nonzero eigenvalues, and u = G^T w /
        sqrt(N lambda) is M's eigenvector for K's (w, lambda). For a Linear target
        g_i^T g_j = (delta_i . delta_j)(a_i . a_j), so K costs O(N^2 (d_out + d_in)) and
        no D-vector (the deltas of every rank are gathered first).
        """
        f64 = torch.float64
        if self.structure == "linear":
            d = self.deltas.to(f64)
            if self.world.size > 1:
                d = self.world.all_reduce(d.clone())  # other ranks' rows are zero here
            a = self.layer.A.to(f64)
            return (d @ d.T) * (a @ a.T) / self.problem.N
        if not self.cached or self.world.size > 1:
            return None
        G = torch.cat([self._grads[c.start] for c in self.problem.slices()]).to(f64)
        return G @ G.T / self.problem.N

    def project(self, V: Tensor) -> Tensor:
        """G V, the per-sample gradients times V (D, m): (N, m) float64 (every rank's
        rows; uncached generic gradients are recomputed chunk by chunk)."""
        p, f64 = self.problem, torch.float64
        out = torch.zeros(p.N, V.shape[1], dtype=f64, device=self.device)
        Vc = V.to(device=self.device, dtype=p.dtype)
        for chunk in self.world.shard(p.slices()):
            if self.structure == "linear":
                lay = self.layer
                a, d = lay.A[chunk], self.deltas[chunk]
                for j in range(0, Vc.shape[1], 16):
                    # X_c a_i for 16 columns as one GEMM (the Kronecker operator's layout)
                    X = Vc[:, j:j + 16]
                    m = X.shape[1]
                    Xt = X.reshape(lay.d_out, lay.d_in, m).permute(1, 0, 2).reshape(
                        lay.d_in, lay.d_out * m)
                    U = (a @ Xt).view(-1, lay.d_out, m)
                    out[chunk, j:j + m] = (d[:, :, None] * U).sum(1).to(f64)
            else:
                G = self._grads.get(chunk.start)
                G = self._chunk_gradients(chunk) if G is None else G
                out[chunk] = (G @ Vc).to(f64)
        return self.world.all_reduce(out)

    def mean_gradient(self) -> Tensor:
        """g = (1/N) sum_i g_i, shape (D,), float64 (accumulated over the chunks)."""
        p = self.problem
        g = torch.zeros(p.D, dtype=torch.float64, device=self.device)
        for chunk in self.world.shard(p.slices()):
            if self.structure == "linear":
                a, d = self.layer.A[chunk], self.deltas[chunk]
                g += (d.to(torch.float64).T @ a.to(torch.float64)).reshape(-1)
            else:
                G = self._grads.get(chunk.start)
                if G is None:
                    G = self._chunk_gradients(chunk)
                g += G.to(torch.float64).sum(0)
        self.world.all_reduce(g)
        return g / p.N


class CovarianceOperator(LinearCombination):
    """C = (1/B) [ M - g g^T ] (SPEC 3, paper Eq. 2), a composition of M and g g^T.

    C v = (1/B)[(1/N) sum_i g_i (g_i^T v) - g (g^T v)].

    Args:
        second_moment: the operator M (it also supplies g).
        batch_size: the training batch size B.
    """

    def __init__(self, second_moment: SecondMomentOperator, batch_size: int):
        self.second_moment = second_moment
        self.gradient = second_moment.mean_gradient()
        outer = LowRankOperator(second_moment.problem, self.gradient)
        b = float(batch_size)
        super().__init__([(1.0 / b, second_moment), (-1.0 / b, outer)])
