"""Alignment, commutation and noise-geometry statistics of SPEC section 6.

Every function works on k x k matrices already projected onto the Hessian eigenbasis
(X_V = V^T X V, float64) and the eigenvalues lambda_1 >= ... >= lambda_k, so nothing
here touches the network. Random baselines draw from ``numpy.random.default_rng(seed)``:
Haar-random orthogonal matrices come from ``scipy.stats.ortho_group``.

How to read them (paper Sec. 2.2, Fig. 1 and 4, App. C-D):

- ``mu_offdiag`` is the mean |R_ij| of C's correlation matrix in H's eigenbasis. If C
  were unrelated to H's eigenbasis, a Haar rotation of C's own spectrum gives
  ``mu_rand``; ``mu_h0`` = sqrt(2/pi)/sqrt(m_eff) is the SPEC's closed-form chance
  level and ``z_score``/``log10_p`` test mu_offdiag against it. (The closed form ignores
  that rotated columns are orthogonal; with that constraint the expected |R_ij| is
  sqrt(2/pi) * std(lambda_C) * sqrt(m) / sum(lambda_C), which is 0 for a flat spectrum:
  ``mu_rand`` is the exact baseline, ``mu_h0`` an upper approximation for spread spectra.)
- ``comm_err`` is small when C is nearly diagonal in H's eigenbasis. Two baselines:
  ``comm_err_rand`` rotates C with its spectrum kept; with heavy-tailed spectra it
  shrinks like 1/sqrt(k) and can fall below comm_err. ``comm_err_unrelated`` compares two
  independent GOE matrices (about sqrt(2) for large k), the paper's "unrelated
  matrices" level.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, ortho_group, spearmanr

FROB_TERMS = ("c_hh", "c_hg", "c_gg", "c_awd_raw", "c_hh_sd", "c_hh_sd_wd", "covar")
"""The terms of ``frob`` (dim ``term``), paper Fig. 4f."""


def correlation(C: np.ndarray) -> np.ndarray:  # noqa: N803
    """R_ij = C_ij / sqrt(|C_ii C_jj|) (0 where a diagonal entry is 0)."""
    d = np.sqrt(np.abs(np.diag(C)))
    scale = np.outer(d, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        R = np.where(scale > 0, C / np.where(scale > 0, scale, 1.0), 0.0)
    return R


def diagonal(x: np.ndarray) -> np.ndarray:
    """X_ii along the last two axes of a k x k variable (a copy); a stored diagonal
    (``analysis.diag_only``, one axis fewer) is returned as it is."""
    x = np.asarray(x)
    if x.ndim >= 2 and x.shape[-1] == x.shape[-2]:
        return np.diagonal(x, axis1=-2, axis2=-1).copy()
    return x


def mean_offdiag_abs(R: np.ndarray) -> float:  # noqa: N803
    """Mean over i != j of |R_ij|."""
    m = R.shape[0]
    if m < 2:
        return math.nan
    return float(np.abs(R)[~np.eye(m, dtype=bool)].mean())


def haar(m: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal m x m matrix (``scipy.stats.ortho_group``)."""
    if m == 1:
        return np.array([[1.0 if rng.random() < 0.5 else -1.0]])
    return ortho_group.rvs(m, random_state=rng)


def haar_rotated(spectrum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Q diag(spectrum) Q^T with Q Haar-distributed in O(m) (:func:`haar`): a matrix with
    the given spectrum and an eigenbasis unrelated to H's (SPEC 6 ``mu_rand``'s baseline)."""
    Q = haar(len(spectrum), rng)  # noqa: N806
    return (Q * np.asarray(spectrum)) @ Q.T


def commutation_error(C: np.ndarray, eigvals: np.ndarray) -> float:  # noqa: N803
    """||C Lam - Lam C||_F / (||C||_F ||Lam||_F), Lam = diag(eigvals)."""
    lam = np.asarray(eigvals, dtype=np.float64)
    num = np.linalg.norm(C * (lam[None, :] - lam[:, None]))
    den = np.linalg.norm(C) * np.linalg.norm(lam)
    return float(num / den) if den > 0 else math.nan


def log10_normal_cdf(z: float) -> float:
    """log10 Phi(z), computed in log space (``norm.logcdf``): finite at z = -3000, where
    Phi(z) itself underflows to 0."""
    return float(norm.logcdf(z) / math.log(10.0))


def goe(k: int, rng: np.random.Generator) -> np.ndarray:
    """A k x k GOE matrix: symmetric with i.i.d. Gaussian entries."""
    A = rng.standard_normal((k, k))
    return (A + A.T) / math.sqrt(2.0)


def unrelated_commutation(k: int, n_rand: int, rng: np.random.Generator) -> float:
    """Mean ||AB - BA||_F / (||A||_F ||B||_F) of two independent GOE matrices."""
    vals = []
    for _ in range(n_rand):
        A, B = goe(k, rng), goe(k, rng)
        vals.append(np.linalg.norm(A @ B - B @ A) / (np.linalg.norm(A) * np.linalg.norm(B)))
    return float(np.mean(vals))


def alignment_statistics(C: np.ndarray, eigvals: np.ndarray, *, corr_top: int,  # noqa: N803
                         n_rand: int, n_fit: int, seed: int) -> dict[str, tuple]:
    """Every SPEC 6 alignment statistic of one covariance C_V.

    Args:
        C: k x k covariance in the Hessian eigenbasis (a diagonal-only (k,) array gives
            only the diagonal statistics; the others are NaN).
        eigvals: lambda_1 >= ... >= lambda_k.
        corr_top: m, the leading directions of ``corr`` and the alignment test (<= k).
        n_rand: draws of each random baseline.
        n_fit: directions of ``spearman``.
        seed: seeds the Haar rotations and GOE draws.

    Returns:
        name -> (dims, value) for corr, mu_offdiag, mu_rand, m_eff, mu_h0, z_score,
        log10_p, comm_err, comm_err_rand, comm_err_unrelated, eig_alignment, spearman.
    """
    C = np.asarray(C, dtype=np.float64)
    lam = np.asarray(eigvals, dtype=np.float64)
    k = lam.shape[0]
    diag = C if C.ndim == 1 else np.diag(C)
    rng = np.random.default_rng(seed)
    out: dict[str, tuple] = {}
    d_fit, l_fit = diag[:n_fit], lam[:n_fit]
    defined = n_fit >= 2 and np.ptp(d_fit) > 0 and np.ptp(l_fit) > 0
    rho = spearmanr(d_fit, l_fit).statistic if defined else math.nan
    out["spearman"] = ((), float(rho))
    if C.ndim == 1:
        for name in ("mu_offdiag", "mu_rand", "m_eff", "mu_h0", "z_score", "log10_p",
                     "comm_err", "comm_err_rand", "eig_alignment"):
            out[name] = ((), math.nan)
        out["comm_err_unrelated"] = ((), unrelated_commutation(k, n_rand, rng))
        return out
    m = min(corr_top, k)
    Cm = C[:m, :m]
    R = correlation(Cm)
    out["corr"] = (("top", "top_"), R)
    mu = mean_offdiag_abs(R)
    spectrum = np.linalg.eigvalsh(Cm)
    out["mu_offdiag"] = ((), mu)
    out["mu_rand"] = ((), float(np.mean([
        mean_offdiag_abs(correlation(haar_rotated(spectrum, rng))) for _ in range(n_rand)])))
    total, sq = spectrum.sum(), (spectrum ** 2).sum()
    m_eff = float(total ** 2 / sq) if sq > 0 else math.nan
    mu_h0 = math.sqrt(2 / math.pi) / math.sqrt(m_eff)
    se = math.sqrt((1 - 2 / math.pi) / m_eff) / math.sqrt(m * (m - 1)) if m > 1 else math.nan
    z = (mu - mu_h0) / se
    out.update(m_eff=((), m_eff), mu_h0=((), mu_h0), z_score=((), z),
               log10_p=((), log10_normal_cdf(z)))
    out["comm_err"] = ((), commutation_error(C, lam))
    out["comm_err_rand"] = ((), float(np.mean([
        commutation_error(Q @ C @ Q.T, lam) for Q in (haar(k, rng) for _ in range(n_rand))])))
    out["comm_err_unrelated"] = ((), unrelated_commutation(k, n_rand, rng))
    out["eig_alignment"] = ((), float(np.linalg.norm(diag) / np.linalg.norm(C)))
    return out


def frob_norms(matrices: dict[str, np.ndarray]) -> tuple[tuple, list[str]]:
    """``frob`` (dim ``term``): ||X||_F of :data:`FROB_TERMS` (NaN where a term is missing
    or stored diagonal-only); returns ((dims, values), term coordinate)."""
    vals = [float(np.linalg.norm(matrices[t])) if t in matrices and np.ndim(matrices[t]) == 2
            else math.nan for t in FROB_TERMS]
    return (("term",), np.array(vals)), list(FROB_TERMS)


def noise_geometry(covar: np.ndarray, fisher: np.ndarray, loss: float,
                   batch_size: int) -> dict[str, tuple]:
    """Wang & Wu's alignments with Sigma = B C and G = F, in the top-k subspace.

    ``dir_alignment``_i = v_i^T Sigma v_i / (2 L v_i^T F v_i) and ``loss_alignment`` =
    Tr(Sigma_V F_V) / (2 L ||F_V||_F^2), L the analysis-set loss.
    """
    S = batch_size * np.asarray(covar, dtype=np.float64)
    F = np.asarray(fisher, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        dir_al = np.diag(S) / (2.0 * loss * np.diag(F))
    loss_al = float(np.sum(S * F) / (2.0 * loss * np.sum(F * F)))
    return {"dir_alignment": (("eig",), dir_al), "loss_alignment": ((), loss_al)}
