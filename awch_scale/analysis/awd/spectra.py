"""Per-sample Hessian spectra on the probe set and the Theorem 3.4 statistics.

For a Linear target h_p = Q_p (x) a_p a_p^T (row-major vec), so its nonzero spectrum
comes from a d_out x d_out eigensolve: Q_p = sum_m lambda_m q_m q_m^T gives

    kappa_m = |a_p|^2 lambda_m,     u_m = vec(q_m a_p^T) / |a_p|,

m = 1..d_out in descending (algebraic) order; the other D - d_out eigenvalues of h_p
are 0 and drop out of every kappa-weighted sum below. Sign of q_m: its entry of
largest magnitude is positive (only ``u_proj`` depends on it).

With the partners p_r (r = 1..R) of probe p, dw_p^(r) = vec((W da_r) a_p^T)/|a_p|^2
and u_m . dw_p^(r) = q_m . (W da_r) / |a_p|, so

- sigma2_pm = E_r[(q_m . W da_r)^2] / |a_p|^2
- V^T u_m = Y_p^T q_m / |a_p|, Y_p = Vr . a_p (see :mod:`.projection`)
- c_hh_sd_wd = (1/(2B)) E_p[sum_m kappa_m^2 sigma2_pm (V^T u_m)(V^T u_m)^T]
- sigma_w2 = sum_{p,m} kappa_m^2 sigma2_pm / sum_{p,m} kappa_m^2

A probe with a_p = 0 has h_p = 0 (kappa = 0): it adds nothing.

Degenerate curvatures. Where several nonzero kappa_m of one probe coincide (e.g. ``lmse``
with the output layer as target: Q_p = (2/K) I), the local eigenbasis inside that
eigenspace is arbitrary and "M_p replaced by its diagonal" would depend on it. The
basis-free reading used here is the pinching of M_p to the eigenspaces of h_p, i.e.
sum over eigenvalues kappa of kappa^2 V^T P_kappa M_p P_kappa V: inside a degenerate
group the off-diagonal entries M_p,mn (m != n in the group) are kept as well. Where
the kappa are distinct (the generic case) this is exactly the formula above, and
sigma_w2 is unchanged (it only needs the traces of the blocks). Eigenvalues are
grouped when consecutive ones differ by at most ``DEGENERACY_RTOL`` times the largest
|kappa| of the probe (scaled by the dtype's machine epsilon).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from awch_scale.analysis.awd.accumulate import MomentSum
from awch_scale.model.projection import RankOneBasis
from awch_scale.model.target import TargetLayer

DEGENERACY_RTOL = 1e3
"""Group kappa_m closer than DEGENERACY_RTOL * eps(dtype) * max_m |kappa_m| (see above)."""


@dataclass
class ProbeSpectra:
    """Spectra of a chunk of probes (float64).

    Attributes:
        kappa: (n, d_out) eigenvalues kappa_m, descending.
        u_proj: (n, d_out, k) projections v_i . u_m.
        sigma2: (n, d_out) sigma2_pm.
        proj: (n, R, d_out) u_m . dw_p^(r).
        rtol: relative tolerance for degenerate kappa.
    """

    kappa: Tensor
    u_proj: Tensor
    sigma2: Tensor
    proj: Tensor
    rtol: float


def fix_column_signs(S: Tensor) -> Tensor:
    """Flip the columns of a batch of matrices (n, d, m): largest-|.| entry positive."""
    idx = S.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(torch.gather(S, 1, idx))
    signs[signs == 0] = 1
    return S * signs


def q_spectrum(tl: TargetLayer, z: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of Q_p for a batch in float64: lam (n, c) descending (algebraic) and S
    (n, d, c) their eigenvectors, d = d_out.

    Full route (c = d): eigh of Q_p, O(d^3) per sample. Low-rank route, when
    Q_p = J_p^T S_p J_p exactly (:attr:`TargetLayer.ggn_exact`: the head is piecewise
    linear) and K < d (K logits): J_p^T = U_p R_p (thin QR), R_p S_p R_p^T = W_p
    diag(mu) W_p^T (K x K), so the K eigenpairs (mu, U_p W_p) are those of Q_p on the
    row space of J_p and the other d - K eigenvalues are exactly 0 (c = K;
    :func:`_with_zero_modes` puts the zeros in their place). O(d K^2) per sample: at
    d = 1000 and 4000 the full route's Hessian and eigh took about 0.3 s and 20 s per
    probe on one CPU thread, most of the AWD stage at D = 1e6 and 1.6e7.
    """
    if not tl.ggn_exact or tl.n_logits >= z.shape[1]:
        lam, S = torch.linalg.eigh(tl.q_full(z, x, y).to(torch.float64))
        return lam.flip(-1), fix_column_signs(S.flip(-1))
    J, Sf = tl.ggn_factors(z, x, y)
    U, R = torch.linalg.qr(J.to(torch.float64).transpose(1, 2))
    B = R @ Sf.to(torch.float64) @ R.transpose(1, 2)
    mu, W = torch.linalg.eigh(0.5 * (B + B.transpose(1, 2)))
    return mu.flip(-1), fix_column_signs(U @ W.flip(-1))


def _with_zero_modes(lam: Tensor, d: int, u_proj: Tensor, proj: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """The c modes of :func:`q_spectrum` widened to all d modes of Q_p: lam (n, c),
    u_proj (n, c, k) and proj (n, R, c) get the d - c exact zero eigenvalues inserted
    where they fall in the descending order (after the positive, before the negative
    ones), with zero rows of u_proj and proj (nothing to project: each of their
    kappa-weighted terms is 0)."""
    n, c = lam.shape
    if c == d:
        return lam, u_proj, proj
    full = torch.cat([lam, lam.new_zeros(n, d - c)], 1)
    order = torch.sort(-full, dim=1, stable=True).indices  # (n, d): source of each mode
    u_full = torch.cat([u_proj, u_proj.new_zeros(n, d - c, u_proj.shape[2])], 1)
    p_full = torch.cat([proj, proj.new_zeros(n, proj.shape[1], d - c)], 2)
    return (torch.gather(full, 1, order),
            torch.gather(u_full, 1, order[:, :, None].expand(-1, -1, u_proj.shape[2])),
            torch.gather(p_full, 2, order[:, None, :].expand(-1, proj.shape[1], -1)))


def probe_spectra(tl: TargetLayer, basis: RankOneBasis, probes, partners) -> ProbeSpectra:
    """Per-sample spectra and sigma2 for probes (n,) with partners (n, R)."""
    a, z, x, y = tl.index(probes)
    lam, S = q_spectrum(tl, z, x, y)
    a64 = a.to(torch.float64)
    asq = (a64 * a64).sum(1)
    inv = torch.where(asq > 0, asq.rsqrt(), torch.zeros_like(asq))
    Y = basis.lift(a).to(torch.float64)
    u_proj = torch.einsum("nim,nik->nmk", S, Y) * inv[:, None, None]
    n, R = partners.shape
    ap = tl.index(partners.reshape(-1))[0].view(n, R, -1).to(torch.float64)
    wda = (ap - a64[:, None, :]) @ tl.W.to(torch.float64).T
    proj = torch.einsum("nri,nim->nrm", wda, S) * inv[:, None, None]
    lam, u_proj, proj = _with_zero_modes(lam, z.shape[1], u_proj, proj)
    kappa = asq[:, None] * lam
    rtol = DEGENERACY_RTOL * torch.finfo(tl.problem.dtype).eps
    return ProbeSpectra(kappa=kappa, u_proj=u_proj, sigma2=proj.pow(2).mean(1), proj=proj,
                        rtol=rtol)


def degenerate_groups(kappa: Tensor, rtol: float) -> list[tuple[int, list[int]]]:
    """(probe, modes) of every group of >= 2 equal nonzero kappa (kappa sorted descending)."""
    scale = kappa.abs().amax(1, keepdim=True)
    close = (kappa[:, :-1] - kappa[:, 1:]) <= rtol * scale
    nonzero = kappa.abs() > rtol * scale
    close &= nonzero[:, :-1] & nonzero[:, 1:]
    groups = []
    for p in torch.nonzero(close.any(1)).flatten().tolist():
        run: list[int] = []
        for m, c in enumerate(close[p].tolist()):
            if c:
                run = run or [m]
                run.append(m + 1)
            elif run:
                groups.append((p, run))
                run = []
        if run:
            groups.append((p, run))
    return groups


def add_probe_statistics(sp: ProbeSpectra, c_wd: MomentSum) -> tuple[float, float]:
    """Add sum_m kappa^2 sigma2 (V^T u_m)(V^T u_m)^T to ``c_wd`` (pinched where degenerate).

    Returns:
        (sum_{p,m} kappa^2 sigma2, sum_{p,m} kappa^2) of the chunk, for sigma_w2.
    """
    weight = sp.kappa.pow(2) * sp.sigma2
    k = sp.u_proj.shape[-1]
    c_wd.add(sp.u_proj.reshape(-1, k), weight=weight.reshape(-1))
    for p, modes in degenerate_groups(sp.kappa, sp.rtol):
        X = sp.u_proj[p, modes]  # (g, k)
        P = sp.proj[p][:, modes]  # (R, g)
        M = P.T @ P / P.shape[0]
        M.fill_diagonal_(0.0)  # the diagonal is already in
        kappa2 = sp.kappa[p, modes].pow(2).mean()
        c_wd.add(X, M @ X, weight=kappa2.expand(len(modes)))
    return float(weight.sum()), float(sp.kappa.pow(2).sum())
