"""SPEC 6 statistics and SPEC 3 covar_within against direct dense float64 computations,
and the random baselines against closed forms."""

from __future__ import annotations

import math

import dense_reference as ref
import numpy as np
import pytest
import torch
from scipy.stats import norm, spearmanr

from awch_scale import analyze_checkpoint
from awch_scale.analysis.statistics import (
    alignment_statistics,
    commutation_error,
    haar,
    log10_normal_cdf,
    unrelated_commutation,
)

N, B = 48, 6


def _dense_stats(C: np.ndarray, lam: np.ndarray, m: int, n_fit: int) -> dict[str, float]:
    """SPEC 6 formulas written out with loops (independent of awch_scale.analysis.statistics)."""
    k = len(lam)
    R = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            R[i, j] = C[i, j] / math.sqrt(abs(C[i, i] * C[j, j]))
    mu = sum(abs(R[i, j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    ev = np.linalg.eigvalsh(C[:m, :m])
    m_eff = ev.sum() ** 2 / (ev ** 2).sum()
    mu_h0 = math.sqrt(2 / math.pi) / math.sqrt(m_eff)
    se = math.sqrt((1 - 2 / math.pi) / m_eff) / math.sqrt(m * (m - 1))
    z = (mu - mu_h0) / se
    comm = math.sqrt(sum((C[i, j] * lam[j] - lam[i] * C[i, j]) ** 2
                         for i in range(k) for j in range(k)))
    comm /= math.sqrt((C ** 2).sum()) * math.sqrt((lam ** 2).sum())
    return dict(mu_offdiag=mu, m_eff=m_eff, mu_h0=mu_h0, z_score=z,
                log10_p=norm.logcdf(z) / math.log(10), comm_err=comm,
                eig_alignment=math.sqrt(sum(C[i, i] ** 2 for i in range(k)))
                / math.sqrt((C ** 2).sum()),
                spearman=spearmanr(np.diag(C)[:n_fit], lam[:n_fit]).statistic, absR=np.abs(R))


def _dense_within(G: np.ndarray, y: np.ndarray, batch: int) -> np.ndarray:
    classes = np.unique(y)
    out = 0
    for c in classes:
        Gc = G[y == c]
        mc = Gc.mean(0)
        out = out + sum(np.outer(g, g) for g in Gc) / len(Gc) - np.outer(mc, mc)
    return out / (batch * len(classes))


@pytest.mark.parametrize("loss", ["ce", "mse", "lmse"])
@pytest.mark.parametrize("kind,target", [("fc", "fc2"), ("cnn", "fc1")])
def test_statistics_equal_dense(kind, target, loss):
    model, x, y = ref.make_model(kind, N)
    H = ref.dense_hessian(model, target, x, y, loss)
    vals, U = ref.dense_eigh(H)
    k, _ = ref.gapped_k(vals, 4, 6)
    G = ref.per_sample_gradients(model, target, x, y, loss)
    ds = analyze_checkpoint(model, target, x, y, loss=loss, batch_size=B, k=k, awd=None,
                            spectra=None, dtype=torch.float64, eigen={"tol": 1e-13},
                            stats={"corr_top": k - 1, "n_rand": 3})
    Uk = U[:, :k]
    C = Uk.T @ ref.dense_covariance(G, B) @ Uk
    want = _dense_stats(C, vals[:k], k - 1, k)
    for name in ("mu_offdiag", "m_eff", "mu_h0", "z_score", "log10_p", "comm_err",
                 "eig_alignment", "spearman"):
        np.testing.assert_allclose(float(ds[name]), want[name], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(np.abs(ds.corr.values), want["absR"], rtol=1e-6, atol=1e-12)
    # covar_within (SPEC 3), projected on the dense eigenvectors (sign-invariant diagonal)
    W = Uk.T @ _dense_within(G, y.numpy(), B) @ Uk
    np.testing.assert_allclose(np.diag(ds.covar_within.values), np.diag(W), rtol=1e-6,
                               atol=1e-12 * np.abs(W).max())
    np.testing.assert_allclose(np.abs(ds.covar_within.values), np.abs(W), rtol=1e-6,
                               atol=1e-9 * np.abs(W).max())
    frob = dict(zip(ds.term.values, ds.frob.values, strict=True))
    np.testing.assert_allclose(frob["covar"], np.linalg.norm(C), rtol=1e-6)
    assert math.isnan(frob["c_hh"])  # AWD off: missing terms are NaN, not 0
    # noise geometry (Wang & Wu) against the stored fisher and the dense loss
    with torch.no_grad():
        L = float(ref.block_loss(model, target, x, y, loss)(ref.flat_block(model, target)))
    F = ds.fisher.values
    S = B * C
    np.testing.assert_allclose(ds.dir_alignment.values, np.diag(S) / (2 * L * np.diag(F)),
                               rtol=1e-6)
    np.testing.assert_allclose(float(ds.loss_alignment),
                               np.trace(S @ F) / (2 * L * (F ** 2).sum()), rtol=1e-6)


def test_log10_p_is_finite_far_in_the_tail():
    """z = -3000: log10 Phi(z) in log space (Phi itself underflows to 0 in float64)."""
    assert norm.cdf(-3000.0) == 0.0
    got = log10_normal_cdf(-3000.0)
    np.testing.assert_allclose(got, norm.logcdf(-3000.0) / math.log(10), rtol=1e-12)
    # asymptotics: log Phi(z) = -z^2/2 - log(-z) - log(sqrt(2 pi)) + O(1/z^2)
    asym = (-3000.0 ** 2 / 2 - math.log(3000.0) - 0.5 * math.log(2 * math.pi)) / math.log(10)
    np.testing.assert_allclose(got, asym, rtol=1e-9)
    # and the stored statistic uses it: a diagonal C is far below chance
    m = 60
    st = alignment_statistics(np.diag(np.arange(m, 0, -1.0)), np.arange(m, 0, -1.0),
                              corr_top=m, n_rand=1, n_fit=m, seed=0)
    assert st["mu_offdiag"][1] == 0 and st["z_score"][1] < -50
    np.testing.assert_allclose(st["log10_p"][1], log10_normal_cdf(st["z_score"][1]),
                               rtol=1e-12)


def test_mu_rand_closed_forms():
    """Haar rotation of diag(lambda): for a flat spectrum C_rand = c I, so mu_rand = 0
    exactly (the rotated columns are orthogonal); for a spread spectrum
    E|R_ij| ~ sqrt(2/pi) std(lambda) sqrt(m) / sum(lambda) (the centred version of the
    SPEC's mu_h0, which ignores orthogonality and is larger). Tolerance: 5 %, about
    3 standard errors of the mean over 20 draws of m(m-1) = 39,800 correlated pairs."""
    m = 200
    flat = alignment_statistics(np.eye(m) * 2.5, np.arange(m, 0, -1.0), corr_top=m,
                                n_rand=3, n_fit=m, seed=1)
    assert flat["mu_rand"][1] < 1e-12 and flat["mu_offdiag"][1] == 0
    lam = np.random.default_rng(0).exponential(size=m)
    st = alignment_statistics(np.diag(lam), np.sort(lam)[::-1], corr_top=m, n_rand=20,
                              n_fit=m, seed=2)
    pred = math.sqrt(2 / math.pi) * lam.std() * math.sqrt(m) / lam.sum()
    np.testing.assert_allclose(st["mu_rand"][1], pred, rtol=0.05)
    assert st["mu_h0"][1] > 1.3 * st["mu_rand"][1]  # the SPEC's chance level is above it


def test_comm_err_rand_by_hand_for_k_2():
    """k = 2, C = diag(a, b) rotated by a Haar Q in O(2): |C'_12| = |a - b| |sin 2t| / 2,
    E|sin 2t| = 2/pi, so E[comm] = sqrt(2) |a-b| |l1-l2| / (pi ||C|| ||Lam||)."""
    a, b, lam = 3.0, 1.0, np.array([2.0, 0.5])
    st = alignment_statistics(np.diag([a, b]), lam, corr_top=2, n_rand=20000, n_fit=2, seed=3)
    want = math.sqrt(2) * abs(a - b) * abs(lam[0] - lam[1]) / (
        math.pi * math.hypot(a, b) * np.linalg.norm(lam))
    # the draw std of comm is about want * 0.3 / sqrt(20000) ~ 0.2 %: 1 % is 4-5 SE
    np.testing.assert_allclose(st["comm_err_rand"][1], want, rtol=0.01)
    assert st["comm_err"][1] == 0.0  # C diagonal in H's eigenbasis: they commute


def test_commutation_baselines_scale_like_sqrt_2_over_k():
    """Two independent GOE matrices: ||AB - BA||_F ~ sqrt(2) ||A||_F ||B||_F / sqrt(k),
    so comm_err_unrelated ~ sqrt(2/k) (not sqrt(2): see docs/spec-notes.md). A Haar-rotated
    heavy-tailed C against a heavy-tailed Lam shrinks the same way."""
    rng = np.random.default_rng(4)
    for k in (50, 200):
        np.testing.assert_allclose(unrelated_commutation(k, 5, rng) / math.sqrt(2 / k), 1.0,
                                   rtol=0.05)
    rand = {}
    for k in (100, 400):
        lam, c = 1.0 / np.arange(1, k + 1), 1.0 / np.arange(1, k + 1) ** 2
        rand[k] = np.mean([commutation_error((Q * c) @ Q.T, lam)
                           for Q in (haar(k, rng) for _ in range(10))])
    # 4x the dimension: 2x smaller for a pure 1/sqrt(k) law; measured 1.7-1.8x (the
    # sqrt(2/k) constant is reached slowly: 0.83 of it at k = 100, 0.96 at k = 400)
    assert 1.5 < rand[100] / rand[400] < 2.5
    for k, v in rand.items():
        assert 0.75 < v / math.sqrt(2 / k) < 1.25
