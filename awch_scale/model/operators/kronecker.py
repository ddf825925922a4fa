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

When the layers after the target are piecewise linear in z (ReLU, max pooling, linear
layers: :func:`~awch_scale.model.target.is_piecewise_linear`), Q_i = J_i^T S_i J_i exactly,
with J_i = df_i/dz (K x d_out) and S_i = d^2 l_i/df^2 (K x K), and the operator caches
these factors instead: N (K d_out + K^2) entries rather than N d_out^2, and Q_i U_i costs
O(K d_out m). At d_out = 1000 and K = 10 that is 100x less memory than the Q_i and keeps
the cache where the Q_i could not be held.

The layout of V is changed once per product, not per chunk: X = mat(v) row-major, the m
columns become one (d_in, d_out m) matrix, and the chunks' sums R^T a accumulate in the
(d_out m, d_in) layout of the GEMM's output, added by the GEMM itself (beta = 1) in the
problem's dtype, exactly as one GEMM over all N samples would sum them (the chunks only
bound the (n, d_out, m) temporaries); the result is converted to float64 once. (The
generic :class:`BlockOperator` adds its chunk results in float64 instead.)

The matrix is the same as :class:`~awch_scale.model.operators.HessianOperator`'s; the tests
hold one against the other and against a dense ``torch.func.hessian``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from awch_scale.model.operators.base import BlockOperator
from awch_scale.model.problem import BlockProblem
from awch_scale.world import SINGLE, World


class KroneckerHessianOperator(BlockOperator):
    """H = (1/N) sum_i Q_i (x) a_i a_i^T for a bias-free ``nn.Linear`` target.

    The operator owns the one cache of the per-sample z-space quantities of the target:
    ``layer`` (a :class:`~awch_scale.model.target.TargetLayer`: the inputs a_i and l_i as a
    function of z) and, while they fit in ``cache_bytes``, the Q_i or their exact factors
    (J_i, S_i). The per-sample projections
    (:func:`awch_scale.model.per_sample.projected_gradients` with ``layer=``) and the AWD
    second moments (:class:`awch_scale.analysis.awd.moments.KronMoments` with
    ``q_source=``) reuse them instead of recomputing.

    Args:
        problem: a block problem whose block is one bias-free Linear weight.
        max_vectors: columns per product (bounds the (chunk, d_out, m) temporaries).
        cache_bytes: memory allowed for the cache (with a ``world`` of several ranks, only
            this rank's chunks are cached).
        world: a :class:`~awch_scale.world.World`; products then sum this rank's
            chunks and all-reduce (see :class:`BlockOperator`).
        layer: an existing TargetLayer of ``problem`` to share (built when None).
        q_form: what to cache: ``auto`` (the factors when they are exact and smaller than
            the Q_i, else the Q_i, whichever fits ``cache_bytes``; nothing when neither
            fits), ``full`` (the Q_i), ``factor`` (J_i, S_i; only when exact), ``none``.

    Attributes:
        q_form: ``full``, ``factor`` or None (recomputed in every product).
        cached: whether anything is cached (``q_form`` is not None).

    Raises:
        ValueError: the block is not one bias-free Linear weight, or ``q_form`` is
            ``factor`` for a model whose layers after the target are not piecewise linear.
    """

    def __init__(self, problem: BlockProblem, *, max_vectors: int = 256,
                 cache_bytes: int = 1 << 30, world: World | None = SINGLE, layer=None,
                 q_form: str = "auto"):
        super().__init__(problem, max_vectors=max_vectors, world=world)
        from awch_scale.model.target import TargetLayer

        self.layer = layer if layer is not None else TargetLayer(problem)
        own = self.world.shard(problem.slices())
        self.q_form = self._choose_form(q_form, own, cache_bytes)
        self.cached = self.q_form is not None
        self._q: dict[int, Tensor | tuple[Tensor, Tensor]] = {}
        for chunk in own if self.cached else ():
            a, z, x, y = self.layer.index(range(problem.N)[chunk])
            self._q[chunk.start] = (self._full(z, x, y) if self.q_form == "full"
                                    else self._factors(z, x, y))

    # the per-sample d_out x d_out matrix (Q_i here; the GGN subclass swaps in G_i)

    def _factors_exact(self) -> bool:
        """Whether :meth:`_factors` multiply out to the per-sample matrix exactly."""
        return self.layer.ggn_exact

    def _full(self, z: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The per-sample matrices of a batch, (n, d_out, d_out)."""
        return self.layer.q_full(z, x, y)

    def _factors(self, z: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(J, S) with J^T S J the per-sample matrices (exact when :meth:`_factors_exact`)."""
        return self.layer.ggn_factors(z, x, y)

    def _uncached_times(self, a: Tensor, x: Tensor, y: Tensor, U: Tensor) -> Tensor:
        """The per-sample matrices times U (n, d_out, m), nothing cached: z-space HVPs."""
        return self.layer.q_times(a @ self.layer.W.T, x, y, U)

    def _choose_form(self, q_form: str, own: list[slice], cache_bytes: int) -> str | None:
        lay, p = self.layer, self.problem
        if q_form not in ("auto", "full", "factor", "none"):
            raise ValueError(f"q_form {q_form!r} must be auto, full, factor or none")
        exact = self._factors_exact()
        if q_form == "factor" and not exact:
            raise ValueError("q_form='factor' needs layers after the target that are "
                             "piecewise linear in its output (Q_i = J_i^T S_i J_i)")
        if q_form != "auto":
            return None if q_form == "none" else q_form
        n_own = sum(len(range(p.N)[c]) for c in own)
        item = torch.empty((), dtype=p.dtype).element_size()
        K = lay.n_logits
        full = n_own * lay.d_out ** 2 * item
        factor = n_own * (K * lay.d_out + K * K) * item if exact else None
        if factor is not None and factor <= cache_bytes and factor < full:
            return "factor"
        return "full" if full <= cache_bytes else None

    def _gather(self, idx, part: int | None) -> Tensor:
        cs = self.problem.chunk_size
        i = torch.as_tensor(idx, dtype=torch.long).cpu()
        starts = (i // cs) * cs

        def rows(s: int) -> Tensor:
            item = self._q[s]
            return item if part is None else item[part]

        if not bool((starts[1:] >= starts[:-1]).all()):  # unsorted: gather row by row
            return torch.stack([rows(int(s))[int(j - s)] for s, j in zip(starts, i, strict=True)])
        return torch.cat([rows(int(s))[(i[starts == s] - s).to(rows(int(s)).device)]
                          for s in starts.unique_consecutive()])

    def _held(self, idx, form: str) -> bool:
        if self.q_form != form:
            return False
        cs = self.problem.chunk_size
        starts = (torch.as_tensor(idx, dtype=torch.long).cpu() // cs) * cs
        return all(int(s) in self._q for s in starts.unique())

    def q_rows(self, idx) -> Tensor | None:
        """The cached Q_i (n, d_out, d_out) of the samples ``idx``, or None when they are
        not cached as full matrices (cache off or factored, or another rank's chunk)."""
        return self._gather(idx, None) if self._held(idx, "full") else None

    def q_factor_rows(self, idx) -> tuple[Tensor, Tensor] | None:
        """The cached exact factors (J_i, S_i) of the samples ``idx`` (see
        :meth:`~awch_scale.model.target.TargetLayer.ggn_factors`), or None."""
        if not self._held(idx, "factor"):
            return None
        return self._gather(idx, 0), self._gather(idx, 1)

    def _accumulate(self, V: Tensor, slices: list[slice]) -> Tensor:
        lay = self.layer
        d_out, d_in = lay.d_out, lay.d_in
        out = torch.empty(V.shape, dtype=torch.float64, device=self.device)
        for j in range(0, V.shape[1], self.max_vectors):
            Vc = V[:, j:j + self.max_vectors]
            m = Vc.shape[1]
            # X_c a_i for all columns c as one GEMM: (n, d_in) @ (d_in, d_out m)
            Vt = Vc.reshape(d_out, d_in, m).permute(1, 0, 2).reshape(d_in, d_out * m)
            acc = torch.zeros(d_out * m, d_in, dtype=V.dtype, device=self.device)
            for chunk in slices:
                a = lay.A[chunk]
                R = self._q_times(chunk, a, (a @ Vt).view(-1, d_out, m))
                # sum_i R_i a_i^T: (d_out m, n) @ (n, d_in) added by the GEMM itself (beta
                # = 1), R^T a view: as one GEMM over all samples would sum them
                acc.addmm_(R.reshape(len(a), d_out * m).T, a)
            # back to the row-major vec layout, converted to float64 in the same copy
            out[:, j:j + m] = acc.view(d_out, m, d_in).permute(0, 2, 1).reshape(-1, m)
        return out

    def _q_times(self, chunk: slice, a: Tensor, U: Tensor) -> Tensor:
        """Q_i U_i for the samples of ``chunk``, U (n, d_out, m)."""
        from awch_scale.model.target import ggn_times

        if self.q_form == "full":
            return torch.bmm(self._q[chunk.start], U)
        if self.q_form == "factor":
            return ggn_times(*self._q[chunk.start], U)
        p = self.problem
        return self._uncached_times(a, p.features[chunk], p.labels[chunk], U)


class KroneckerCombination(KroneckerHessianOperator):
    """A = (1/N) sum_i (alpha delta_i delta_i^T + beta Q_i) (x) a_i a_i^T from a Kronecker
    Hessian's own per-sample cache: alpha M + beta H in one sweep over the samples.

    M = (1/N) sum_i g_i g_i^T with g_i = vec(delta_i a_i^T) (delta_i = d l_i / d z_i) has
    the Hessian's per-sample structure with Q_i replaced by delta_i delta_i^T, so
    H_p = M - H (alpha = 1, beta = -1) costs what one Hessian product costs, where
    ``M - H`` with two operators costs two sweeps, and M alone (beta = 0) needs no
    second TargetLayer or cache. The Q_i (or their factors), the inputs a_i and the
    layer are the Hessian's (``hessian``); only the deltas are new, (N, d_out) values.

    Args:
        hessian: the :class:`KroneckerHessianOperator` whose cache is shared.
        deltas: delta_i, (N, d_out) in the problem's dtype (another rank's rows may be
            zero: only this rank's chunks are read).
        alpha: the coefficient of M.
        beta: the coefficient of H.
    """

    def __init__(self, hessian: KroneckerHessianOperator, deltas: Tensor, alpha: float = 1.0,
                 beta: float = -1.0):
        BlockOperator.__init__(self, hessian.problem, max_vectors=hessian.max_vectors,
                               world=hessian.world)
        self.hessian = hessian
        self.layer, self.q_form, self.cached = hessian.layer, hessian.q_form, hessian.cached
        self._q = hessian._q
        self.deltas = deltas
        self.alpha, self.beta = float(alpha), float(beta)

    def q_rows(self, idx) -> None:
        """None: the Hessian's Q_i are not this operator's per-sample matrices."""
        return None

    def q_factor_rows(self, idx) -> None:
        """None (see :meth:`q_rows`)."""
        return None

    def _q_times(self, chunk: slice, a: Tensor, U: Tensor) -> Tensor:
        """(alpha delta_i delta_i^T + beta Q_i) U_i for the samples of ``chunk``."""
        d = self.deltas[chunk]
        R = (d[:, :, None] * (self.alpha * (d[:, :, None] * U).sum(1, keepdim=True)))
        if self.beta:
            R = R.add_(self.hessian._q_times(chunk, a, U), alpha=self.beta)
        return R
