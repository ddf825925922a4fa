"""Certified bounds on the top eigenvalues of H_p = M - H for a Kronecker Hessian with
exact factors (SPEC 6 ``hp_eigval_top``), so that a top that is a cluster at 0 far
larger than r is known exactly without a Krylov solve.

With the factors Q_i = J_i^T S_i J_i (J_i = df_i/dz, K x d_out; exact when the layers
after the target are piecewise linear) and delta_i = J_i^T e_i (e_i = dl_i/df_i),

    H_p = (1/N) sum_i J_i^T T_i J_i (x) a_i a_i^T,      T_i = e_i e_i^T - S_i  (K x K).

Split each T_i into its positive and negative parts, T_i = T_i^+ - T_i^-; then
H_p = P_+ - P_- with P_+, P_- >= 0, and

- lambda_j(H_p) <= lambda_j(P_+) for every j (Weyl), and P_+'s spectrum is that of the
  Gram matrix of its rows vec(J_i^T t a_i^T) sqrt(tau / N), one per positive eigenpair
  (tau, t) of a T_i: (u . u')(a . a') sqrt(tau tau') / N, as for M (a few per sample at
  most: for ce, e e^T - S has at most one positive eigenvalue);
- H_p has at most rank(P_-) <= R_- negative eigenvalues, R_- the count of negative
  eigenvalues of the T_i, so lambda_r(H_p) >= 0 when D - R_- >= r.

So 0 <= lambda_j(H_p) <= lambda_j(P_+) for j <= r, and every j with lambda_j(P_+) <= the
accuracy is 0 within it: a well-trained network (confident samples: T_i <= 0, P_+ = 0)
has a top of H_p of exact zeros, which a Krylov solver could only approach through the
dense bulk of H below 0 (issue 17). Eigenvalues of the T_i below 1e-9 of the largest are
dropped from P_+ and their largest possible contribution added to every bound, so the
bounds stay certain.
"""

from __future__ import annotations

import numpy as np
import torch

DROP = 1e-9
"""Positive eigenvalues of T_i below DROP times the largest |eigenvalue| of any T_i are
left out of P_+'s rows (their bound is added to every upper bound instead)."""


def hp_top_bounds(hess, deltas, r: int, max_rows: int = 4096) -> np.ndarray | None:
    """Upper bounds u_j >= lambda_j(H_p), j = 1..r, with lambda_r(H_p) >= 0 guaranteed,
    or None when they cannot be had: no exact factors cached (``hess.q_form`` is not
    ``factor``), several processes, more than ``max_rows`` rows of P_+, or fewer than r
    nonnegative eigenvalues guaranteed (D - R_- < r).

    Args:
        hess: a :class:`~awch_scale.model.operators.KroneckerHessianOperator`.
        deltas: delta_i, (N, d_out), the second moment's.
        r: how many bounds.
        max_rows: the largest Gram matrix of P_+ formed.
    """
    if getattr(hess, "q_form", None) != "factor" or hess.world.size > 1:
        return None
    f64 = torch.float64
    lay, p = hess.layer, hess.problem
    rows_u, rows_a, rows_w, n_neg, scale = [], [], [], 0, 0.0
    parts = []
    for chunk in p.slices():
        J, S = (t.to(f64) for t in hess._q[chunk.start])
        d, a = deltas[chunk].to(f64), lay.A[chunk].to(f64)
        # e_i with J_i^T e_i = delta_i (any solution gives the same J^T e e^T J)
        e = torch.linalg.lstsq(J.transpose(1, 2), d[:, :, None]).solution[:, :, 0]
        tau, t = torch.linalg.eigh(e[:, :, None] * e[:, None, :] - S)
        parts.append((J, a, tau, t))
        scale = max(scale, float(tau.abs().max()) if tau.numel() else 0.0)
    cut = DROP * scale
    slack = 0.0
    for J, a, tau, t in parts:
        n_neg += int((tau < 0).sum())
        keep = tau > cut
        small = torch.where((tau > 0) & ~keep, tau, torch.zeros_like(tau)).amax(1)
        # the dropped part of sample i is <= small_i ||J_i||^2 ||a_i||^2 (its norm)
        slack += float((small * torch.linalg.matrix_norm(J, 2) ** 2
                        * (a * a).sum(1)).sum()) / p.N
        i, k = keep.nonzero(as_tuple=True)
        if len(i):
            u = (J[i].transpose(1, 2) @ t[i, :, k][:, :, None])[:, :, 0]  # J_i^T t
            rows_u.append(u)
            rows_a.append(a[i])
            rows_w.append(tau[i, k])
        if sum(len(x) for x in rows_w) > max_rows:
            return None
    if p.D - n_neg < r:
        return None
    upper = np.zeros(r)
    if rows_w:
        U, A, w = torch.cat(rows_u), torch.cat(rows_a), torch.cat(rows_w).sqrt()
        G = (U @ U.T) * (A @ A.T) * (w[:, None] * w[None, :]) / p.N
        lam = torch.linalg.eigvalsh(G).flip(0).clamp(min=0.0).cpu().numpy()[:r]
        upper[:len(lam)] = lam
    # eigvalsh of the Gram matrix is exact to rounding: a margin of 1e-12 of its scale
    return upper + slack + 1e-12 * max(float(upper[0]), 1e-300)


def certify_top(spec, upper: np.ndarray | None, accuracy: float):
    """``spec`` (a :class:`~awch_scale.analysis.spectra_solvers.TopSpectrum` of H_p's top)
    with every rank j whose bound ``upper[j]`` is within ``accuracy`` set to 0 (certain:
    0 <= lambda_j <= upper[j]), and any value above its bound (+ accuracy) NaN with the
    reason (a solver error); unchanged when there are no bounds."""
    if upper is None:
        return spec
    from awch_scale.analysis.spectra_solvers import TopSpectrum

    vals = np.array(spec.values, dtype=float)
    zero = upper <= accuracy
    vals[zero] = 0.0
    notes = [spec.note] if spec.note and np.isnan(vals).any() else []
    above = vals > upper + accuracy
    if above.any():
        notes.append(f"{int(above.sum())} above the certified bound lambda_j(P_+)")
        vals[above] = np.nan
    return TopSpectrum(vals, spec.overlap, spec.spectrum, "; ".join(notes) or None,
                       f"{spec.route}; {int(zero.sum())} of {len(vals)} certified 0 by "
                       "0 <= lambda_j(H_p) <= lambda_j(P_+)")
