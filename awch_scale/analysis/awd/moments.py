"""Second moment of the per-sample Hessians, h2 = V^T E_p[h_p^2] V (SPEC section 4).

Streamed over the whole analysis set in chunks of samples (:meth:`add`), then written
to a float64 :class:`MomentSum` (:meth:`finish`). Alongside, the diagonal of
V^T E_p[h_p] V is accumulated: it must equal the Hessian eigenvalues lambda_i passed
in (a consistency check of V against the problem).

:class:`KronMoments` (Linear target): h_p = Q_p (x) a_p a_p^T, so with
Y_p = Vr . a_p (d_out, k) (see :mod:`.projection`) V^T h_p V = Y_p^T Q_p Y_p, and
h_p^2 = Q_p^2 (x) |a_p|^2 a_p a_p^T. Two exact routes, by cost:

- ``direct``: V^T h_p^2 V = |a_p|^2 (Q_p Y_p)^T (Q_p Y_p), summed per sample:
  N d_out k^2 operations.
- ``weight``: accumulate G = sum_p h_p^2 V in weight space, which is rank-one per
  sample, h_p^2 v_l = |a_p|^2 vec((Q_p^2 Y_p)[:, l] a_p^T), so G (d_out, d_in, k)
  += sum_p |a_p|^2 (Q_p^2 Y_p) (x) a_p: N D k operations, then h2 = V^T G once. It is
  cheaper by d_in / k and chosen when d_in < k and the float64 G (D x k values)
  fits in ``max_weight_elements``.

Q_p Y_p costs min(d_out, k) z-space Hessian-vector products per sample (the full
d_out x d_out Q_p when d_out <= k, else k products with the columns of Y_p; the
weight route needs Q_p^2 Y_p, i.e. twice as many when Q_p is not formed). When the
Hessian operator already cached the Q_p (``q_source=``, a
:class:`~awch_scale.model.operators.KroneckerHessianOperator`), they are taken from it
instead of recomputed, whatever d_out and k; when it cached their exact factors
(J_p, S_p) (layers after the target piecewise linear), Q_p M = J_p^T S_p J_p M in float64
at O(K d_out k) per sample.

With a ``world`` of several ranks the successive :meth:`KronMoments.add` calls are
dealt round robin to the ranks (call c is done by rank c mod size) and
:meth:`KronMoments.finish` all-reduces the float64 sums, so every rank ends with the
sum over the whole analysis set.

:class:`AutodiffMoments` (generic): h_p V by k weight-space HVPs per sample,
(chunk, D, k) memory; a cross-check for small D.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from awch_scale.analysis.awd.accumulate import MomentSum
from awch_scale.model.projection import RankOneBasis
from awch_scale.model.target import TargetLayer, ggn_times
from awch_scale.world import SINGLE, World

MAX_WEIGHT_ELEMENTS = 2**27
"""Largest D * k for the ``weight`` route of :class:`KronMoments` (1 GiB of float64)."""


class KronMoments:
    """h2 and diag(V^T H V) of a Linear target from z-space Hessians (module docstring).

    Args:
        tl, basis: the target layer and the projection basis.
        route: ``auto``, ``direct`` or ``weight``.
        max_weight_elements: bound on D * k for ``weight`` under ``auto``.
        q_source: an object with ``q_rows(idx) -> Tensor | None`` (the Kronecker
            operator's cache of Q_p); None computes Q_p here.
        world: a :class:`~awch_scale.world.World` (module docstring).
    """

    def __init__(self, tl: TargetLayer, basis: RankOneBasis, *, route: str = "auto",
                 max_weight_elements: int = MAX_WEIGHT_ELEMENTS, q_source=None,
                 world: World = SINGLE):
        self.tl, self.basis = tl, basis
        self.q_source, self.world, self._calls = q_source, world or SINGLE, 0
        k, dev = basis.k, tl.problem.device
        if route == "auto":
            cheaper = tl.d_in < k and tl.d_out * tl.d_in * k <= max_weight_elements
            route = "weight" if cheaper else "direct"
        if route not in ("direct", "weight"):
            raise ValueError(f"route {route!r} must be auto, direct or weight")
        self.route = route
        self.h1_diag = torch.zeros(k, dtype=torch.float64, device=dev)
        self._direct = MomentSum(k, full=True, device=dev) if route == "direct" else None
        self._G = (torch.zeros(tl.d_in, tl.d_out * k, dtype=torch.float64, device=dev)
                   if route == "weight" else None)

    def add(self, idx) -> None:
        """Add the samples ``idx``."""
        call, self._calls = self._calls, self._calls + 1
        if call % self.world.size != self.world.rank:
            return
        tl, basis = self.tl, self.basis
        a, z, x, y = tl.index(idx)
        Y = basis.lift(a)
        src = self.q_source
        Q = src.q_rows(idx) if src is not None else None
        F = src.q_factor_rows(idx) if Q is None and hasattr(src, "q_factor_rows") else None
        if Q is None and F is None and tl.d_out <= basis.k:
            Q = tl.q_full(z, x, y)
        if F is not None:
            F = tuple(f.to(torch.float64) for f in F)
            QY = ggn_times(*F, Y.to(torch.float64))
        else:
            QY = (Q @ Y if Q is not None else tl.q_times(z, x, y, Y)).to(torch.float64)
        self.h1_diag += (Y.to(torch.float64) * QY).sum(1).sum(0)  # (faster than dim=(0, 1))
        a64 = a.to(torch.float64)
        asq = (a64 * a64).sum(1)
        if self._direct is not None:
            self._direct.add((QY * asq.sqrt()[:, None, None]).reshape(-1, basis.k))
            return
        if F is not None:
            Q2Y = ggn_times(*F, QY)
        elif Q is not None:
            Q2Y = Q.to(torch.float64) @ QY
        else:
            Q2Y = tl.q_times(z, x, y, QY.to(a.dtype)).to(torch.float64)
        self._G += a64.T @ (Q2Y * asq[:, None, None]).reshape(len(a), -1)

    def finish(self, h2: MomentSum) -> None:
        """Add the accumulated sum over samples of V^T h_p^2 V to ``h2``."""
        self.world.all_reduce(self.h1_diag)
        for acc in (self._direct.value if self._direct is not None else None, self._G):
            if acc is not None:
                self.world.all_reduce(acc)
        self.world = SINGLE  # finish once: the sums are now global
        if self._direct is not None:
            h2.add_matrix(self._direct.value)
            return
        tl, k = self.tl, self.basis.k
        G = self._G.view(tl.d_in, tl.d_out, k).permute(1, 0, 2).reshape(-1, k)
        M = self.basis.V.to(torch.float64).T @ G
        h2.add_matrix(0.5 * (M + M.T))


class AutodiffMoments:
    """As :class:`KronMoments` with h_p V from weight-space HVPs (tests, small D)."""

    def __init__(self, tl: TargetLayer, basis: RankOneBasis):
        self.tl, self.basis = tl, basis
        dev = tl.problem.device
        self.h1_diag = torch.zeros(basis.k, dtype=torch.float64, device=dev)
        self._sum = MomentSum(basis.k, full=True, device=dev)

    def add(self, idx) -> None:
        """Add the samples ``idx`` (indices into the analysis set)."""
        p = self.tl.problem
        i = torch.as_tensor(idx, device=p.device, dtype=torch.long)
        x, y, V, w = p.features[i], p.labels[i], self.basis.V, p.w

        def one(x1, y1):
            def hvp(v):
                return jvp(lambda w_: grad(p.sample_loss)(w_, x1, y1), (w,), (v,))[1]

            return vmap(hvp, in_dims=1, out_dims=1)(V)

        HV: Tensor = vmap(one)(x, y).to(torch.float64)
        self.h1_diag += (V.to(torch.float64)[None] * HV).sum(1).sum(0)
        self._sum.add(HV.reshape(-1, self.basis.k))

    def finish(self, h2: MomentSum) -> None:
        """Add the accumulated sum over samples of V^T h_p^2 V to ``h2``."""
        h2.add_matrix(self._sum.value)
