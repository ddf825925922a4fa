"""Second moment of the per-sample Hessians, h2 = V^T E_p[h_p^2] V (SPEC section 4).

Streamed over the whole analysis set in chunks of samples; each chunk adds
sum_p V^T h_p^2 V = sum_p (h_p V)^T (h_p V) to a float64 accumulator. Alongside, the
diagonal of V^T E_p[h_p] V is accumulated: it must equal the Hessian eigenvalues
lambda_i passed in (a consistency check of V against the problem).

- :func:`kron_moments` (Linear target): h_p = Q_p (x) a_p a_p^T, so with
  Y_p = Vr . a_p (d_out, k) (see :mod:`.projection`), V^T h_p V = Y_p^T Q_p Y_p and
  h_p^2 = Q_p^2 (x) |a_p|^2 a_p a_p^T gives V^T h_p^2 V = |a_p|^2 (Q_p Y_p)^T (Q_p Y_p).
  Q_p Y_p costs min(d_out, k) z-space Hessian-vector products per sample (the full
  d_out x d_out Q_p when d_out <= k, else k products with the columns of Y_p).
- :func:`autodiff_moments` (generic): h_p V by k weight-space HVPs per sample,
  (chunk, D, k) memory.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from .accumulate import MomentSum
from .projection import RankOneBasis
from .target import TargetLayer


def kron_moments(tl: TargetLayer, basis: RankOneBasis, idx, h2: MomentSum,
                 h1_diag: Tensor) -> None:
    """Add the samples ``idx`` to h2 (sum of V^T h_p^2 V) and h1_diag (sum of diag V^T h_p V)."""
    a, z, x, y = tl.index(idx)
    Y = basis.lift(a)
    if tl.d_out <= basis.k:
        QY = tl.q_full(z, x, y) @ Y
    else:
        QY = tl.q_times(z, x, y, Y)
    QY = QY.to(torch.float64)
    h1_diag += (Y.to(torch.float64) * QY).sum(dim=(0, 1))
    scaled = QY * (a.to(torch.float64) ** 2).sum(1).sqrt()[:, None, None]
    h2.add(scaled.reshape(-1, basis.k))


def autodiff_moments(tl: TargetLayer, basis: RankOneBasis, idx, h2: MomentSum,
                     h1_diag: Tensor) -> None:
    """As :func:`kron_moments` with h_p V from weight-space HVPs (tests, small D)."""
    p = tl.problem
    i = torch.as_tensor(idx, device=p.device, dtype=torch.long)
    x, y, V, w = p.features[i], p.labels[i], basis.V, p.w

    def one(x1, y1):
        def hvp(v):
            return jvp(lambda w_: grad(p.sample_loss)(w_, x1, y1), (w,), (v,))[1]

        return vmap(hvp, in_dims=1, out_dims=1)(V)

    HV = vmap(one)(x, y).to(torch.float64)
    h1_diag += (V.to(torch.float64)[None] * HV).sum(dim=(0, 1))
    h2.add(HV.reshape(-1, basis.k))
