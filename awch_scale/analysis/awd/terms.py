"""Per-pair AWD terms of matched samples, projected onto V (SPEC section 4).

For p in nu with partner p' in mu, delta_a_p = a_p' - a_p and the minimal AWD weight
perturbation (Eq. 9) dw_p = vec((W delta_a_p) a_p^T) / |a_p|^2. Each function here
returns, for a batch of pairs, the four k-vectors

- ``t1``   = V^T Term I_p  = V^T h_p dw_p
- ``t2``   = V^T Term II_p = V^T (d dw_p / d w)^T g_p
- ``g_nu`` = V^T g_p,  ``g_mu`` = V^T g_p'   (for the exact gradient difference)

Two independent ways compute them:

- :func:`kron_pair_terms` (fast path) uses the Linear layer's closed forms. With
  z = W a, delta_p = dl_p/dz and Q_p = d^2 l_p/dz^2 (through the rest of the network),
  h_p = Q_p (x) a_p a_p^T, hence h_p dw_p = vec(Q_p dW_p a_p a_p^T)
  = vec(Q_p (W delta_a_p) a_p^T): one z-space Hessian-vector product per sample.
  dw_p(w) is linear in w with <G, dW_p(W)> = (G a_p)^T W delta_a_p / |a_p|^2, so for
  G = delta_p a_p^T the vector-Jacobian product is Term II_p = vec(delta_p delta_a_p^T).
  Nothing of size D is formed per sample (see :mod:`.projection`). If a_p = 0, h_p = 0
  and Term I_p = 0 (dw_p itself is undefined).
- :func:`autodiff_pair_terms` (generic path) uses only ``torch.func`` on the
  weight-space loss: Term I as a per-sample HVP ``jvp(grad(sample_loss))`` in the
  direction dw_p, Term II as the ``vjp`` of the function w -> dw_p(w) (a_p and
  delta_a_p fixed) applied to g_p. It holds (n, D) arrays per chunk and serves as the
  cross-check of the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from awch_scale.model.projection import RankOneBasis
from awch_scale.model.target import TargetLayer


@dataclass
class PairTerms:
    """Projected per-pair quantities, each (n, k) in the problem's dtype."""

    t1: Tensor
    t2: Tensor
    g_nu: Tensor
    g_mu: Tensor


def kron_pair_terms(tl: TargetLayer, basis: RankOneBasis, nu, mu) -> PairTerms:
    """Closed-form terms for pairs (nu[s], mu[s]) of a Linear target."""
    a, z, x, y = tl.index(nu)
    ap, zp, xp, yp = tl.index(mu)
    da = ap - a
    delta, q_wda = tl.deltas_and_q(z, x, y, da @ tl.W.T)
    delta_p = tl.deltas(zp, xp, yp)
    t1, g_nu = basis.project_many(a, q_wda, delta)
    (t2,) = basis.project_many(da, delta)
    (g_mu,) = basis.project_many(ap, delta_p)
    return PairTerms(t1=t1, t2=t2, g_nu=g_nu, g_mu=g_mu)


def awd_perturbation(w: Tensor, a: Tensor, da: Tensor, d_out: int, d_in: int) -> Tensor:
    """dw = vec((W da) a^T) / |a|^2 for one sample, as a function of the flat w (D,)."""
    W = w.view(d_out, d_in)
    return torch.outer(W @ da, a).reshape(-1) / (a @ a)


def autodiff_pair_terms(tl: TargetLayer, basis: RankOneBasis, nu, mu) -> PairTerms:
    """Generic torch.func terms (per-sample HVP and VJP in weight space), (n, D) memory."""
    p = tl.problem
    w, d_out, d_in = p.w, tl.d_out, tl.d_in
    a, _, x, y = tl.index(nu)
    ap, _, xp, yp = tl.index(mu)
    da = ap - a

    def one(x1, y1, a1, da1):
        def dw_of(w_):
            return awd_perturbation(w_, a1, da1, d_out, d_in)

        g, t1 = jvp(lambda w_: grad(p.sample_loss)(w_, x1, y1), (w,), (dw_of(w),))
        _, pull = vjp(dw_of, w)
        return g, t1, pull(g)[0]

    g, t1, t2 = vmap(one)(x, y, a, da)
    g_mu = vmap(grad(p.sample_loss), in_dims=(None, 0, 0))(w, xp, yp)
    V = basis.V
    return PairTerms(t1=t1 @ V, t2=t2 @ V, g_nu=g @ V, g_mu=g_mu @ V)
