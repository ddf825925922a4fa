"""Projected noise covariances (SPEC 3) against dense float64 matrices.

Dense references (tests/dense_reference.py) from an explicit per-sample loop:
C = (1/B)[(1/N) sum g_i g_i^T - g g^T], M = (1/N) sum g_i g_i^T and C_mb over the
full batches of ``np.random.default_rng(seed).permutation(N)``.

Two routes:

1. the pipeline pieces with a basis V we hold: V^T X V for V = the Lanczos basis of
   ``top_eigenpairs`` (same seed/tol as ``analyze_checkpoint``'s defaults) and for a
   random orthonormal V; tolerance max|A - B| <= 1e-10 * max|B| (observed ~1e-15);
2. ``analyze_checkpoint``, which does not return V: compared through quantities
   that do not depend on the sign of the eigenvectors, with the dense eigenvectors U
   of well-separated eigenvalues: diagonals (U^T X U)_ii and |(U^T X U)_ij|;
   tolerance 1e-6 * ||X||_2 (eigenvectors of the default eigsh tol 1e-6 are accurate
   to ~1e-7 here).
"""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import problems
import pytest
import torch

from awch_scale.analysis.checkpoint import analyze_checkpoint
from awch_scale.analysis.covariance import covariance, minibatch_covariance, second_moment
from awch_scale.linalg.eigen import top_eigenpairs
from awch_scale.model.operators import HessianOperator
from awch_scale.model.per_sample import projected_gradients
from awch_scale.model.problem import make_problem

N = 40
CASES = problems.cases(problems.BASES[:4], problems.LOSSES, N)
RTOL = 1e-10
assert_rel_close = problems.assert_rel_close
MIN_GAP = 0.02


def _dense_mats(G, batch_size, seed):
    return {
        "covar": ref.dense_covariance(G, batch_size),
        "second_moment": ref.dense_second_moment(G),
        "covar_mb": ref.dense_minibatch_covariance(G, batch_size, seed),
    }


@pytest.mark.parametrize("case", CASES, ids=problems.ids(CASES))
def test_projected_covariances_match_dense(case, dense, device):
    G = dense.G
    B, seed, k = 6, 0, 5  # 40 = 6 * 6 + 4: the trailing 4 samples are dropped from C_mb
    problem = make_problem(dense.model, dense.target, dense.x, dense.y, dense.loss,
                           chunk_size=7, device=device)
    # the basis analyze_checkpoint uses by default (seed, eigsh tol 1e-6)
    V = top_eigenpairs(HessianOperator(problem), k, seed=seed, tol=1e-6).vectors
    rng = np.random.default_rng(5)
    Q = torch.from_numpy(np.linalg.qr(rng.standard_normal((problem.D, k)))[0]).to(device)
    mats = _dense_mats(G, B, seed)
    for basis in (V, Q):
        Vn = problems.to_numpy(basis)
        P = projected_gradients(problem, basis)
        assert P.dtype == torch.float64 and P.shape == (N, k)
        assert_rel_close(P, G @ Vn, RTOL)
        got = {
            "covar": covariance(P, B),
            "second_moment": second_moment(P),
            "covar_mb": minibatch_covariance(P, B, seed),
        }
        for name, X in got.items():
            assert X.dtype == torch.float64 and X.shape == (k, k), name
            assert_rel_close(X, Vn.T @ mats[name] @ Vn, RTOL)


@pytest.mark.parametrize("case", [problems.case("cnn", "fc1", "ce", N)], ids=["cnn-fc1-ce"])
@pytest.mark.parametrize("batch_size", [1, 5, 8, 13, N])
def test_minibatch_covariance_batch_sizes(batch_size, case, dense, device):
    # B = 1, B = N and B not dividing N; every seed gives its own permutation
    G = dense.G
    P = torch.from_numpy(G).to(device)  # identity basis: the full D x D matrices
    scale = np.abs(ref.dense_second_moment(G)).max()  # C_mb can be ~0 (B = N)
    for seed in (0, 3):
        assert_rel_close(minibatch_covariance(P, batch_size, seed),
                         ref.dense_minibatch_covariance(G, batch_size, seed), RTOL, scale)
    assert_rel_close(covariance(P, batch_size), ref.dense_covariance(G, batch_size), RTOL)
    if batch_size == N:  # one batch: g_b = g, so C_mb = 0
        assert np.abs(problems.to_numpy(minibatch_covariance(P, N, 0))).max() <= 1e-14 * scale
    if batch_size == 1:  # every sample its own batch: C_mb = M - g g^T = B C
        assert_rel_close(minibatch_covariance(P, 1, 0), ref.dense_covariance(G, 1), RTOL)


def test_minibatch_covariance_rejects_batch_larger_than_n():
    with pytest.raises(ValueError):
        minibatch_covariance(torch.zeros(4, 2, dtype=torch.float64), 5, 0)


@pytest.mark.parametrize("case", CASES, ids=problems.ids(CASES))
def test_analyze_checkpoint_covariances_sign_invariant(case, dense, device):
    G, vals, U = dense.G, dense.vals, dense.U
    B, seed = 6, 11
    k = ref.gapped_k(vals, 3, 6)[0]
    ds = analyze_checkpoint(dense.model, dense.target, dense.x, dense.y, loss=dense.loss,
                            batch_size=B, k=k, device=device, chunk_size=9, awd=None,
                            seeds={"eigen": seed, "covar_mb": seed})
    np.testing.assert_allclose(ds.hess_eigval.values, vals[:k], rtol=0,
                               atol=1e-6 * abs(vals[0]))
    sep = ref.separated_indices(vals, k, MIN_GAP)
    assert len(sep) >= 2, f"too few separated eigenvalues among {vals[:k + 1]}"
    Us = U[:, sep]
    for name, X in _dense_mats(G, B, seed).items():
        got = ds[name].values[np.ix_(sep, sep)]
        want = Us.T @ X @ Us
        scale = np.linalg.norm(X, 2)
        assert_rel_close(np.diag(got), np.diag(want), 1e-6, scale)
        assert_rel_close(np.abs(got), np.abs(want), 1e-6, scale)
        problems.assert_symmetric(ds[name].values, 1e-15, scale)


@pytest.mark.parametrize("case", [problems.case("fc", "fc2", "mse", N)], ids=["fc-fc2-mse"])
def test_analyze_checkpoint_equals_pipeline_pieces(case, dense):
    # analyze_checkpoint = top_eigenpairs + projected_gradients + covariance functions
    model, x, y = dense.model, dense.x, dense.y
    B, k, seed = 8, 4, 2
    ds = analyze_checkpoint(model, "fc2", x, y, loss="mse", batch_size=B, k=k, awd=None,
                            device="cpu", chunk_size=9, seeds={"eigen": seed, "covar_mb": seed})
    problem = make_problem(model, "fc2", x, y, "mse", chunk_size=9)
    basis = top_eigenpairs(HessianOperator(problem), k, seed=seed, tol=1e-6)
    P = projected_gradients(problem, basis.vectors)
    np.testing.assert_allclose(ds.hess_eigval.values, basis.values, rtol=1e-12)
    for name, X in (("covar", covariance(P, B)), ("second_moment", second_moment(P)),
                    ("covar_mb", minibatch_covariance(P, B, seed))):
        assert_rel_close(ds[name].values, X.numpy(), 1e-12)
