"""The speed paths against dense float64 references.

- KroneckerHessianOperator (h_i = Q_i (x) a_i a_i^T) equals torch.func.hessian of the
  mean loss, with Q_i cached, cached as exact factors (ReLU heads) and recomputed
  (tolerance 1e-10 relative to max |H|).
- block_krylov_eigh recovers the top-k eigenvalues and eigenspace of dense matrices
  (eigenvalues to 1e-8 |lambda_1|, projector distance 1e-5 at a spectral gap).
- top_eigenpairs(method="block") through analyze_checkpoint gives the same numbers as
  method="eigsh".
"""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import problems
import pytest
import torch

from awch_scale import analyze_checkpoint
from awch_scale.linalg.eigen import top_eigenpairs
from awch_scale.linalg.krylov import block_krylov_eigh
from awch_scale.model.operators import HessianOperator, KroneckerHessianOperator
from awch_scale.model.problem import make_problem

KRON = problems.cases([("fc", "fc2"), ("fc", "fc1"), ("cnn", "fc1")], problems.LOSSES, 23)
KRON += problems.cases([("fc", "fc2"), ("cnn", "fc1")], problems.LOSSES, 23, act="relu")
BLOCK = [problems.case("fc", "fc2", loss, 60, hidden=(8, 7)) for loss in ("ce", "lmse")]


@pytest.mark.parametrize("case", KRON, ids=problems.ids(KRON))
@pytest.mark.parametrize("q_form", ["full", "factor", "none"])
def test_kronecker_operator_equals_dense_hessian(case, dense, q_form, device):
    """Q_i cached whole, as the exact factors J_i^T S_i J_i (ReLU after the target), or
    recomputed by z-space HVPs: each equals the dense Hessian at 1e-10 max|H|."""
    H = dense.H
    problem = make_problem(dense.model, dense.target, dense.x, dense.y, dense.loss,
                           chunk_size=7, device=device)
    if q_form == "factor" and dict(case.model_kw).get("act", "tanh") != "relu":
        with pytest.raises(ValueError, match="piecewise linear"):  # tanh after the target
            KroneckerHessianOperator(problem, q_form=q_form)
        return
    op = KroneckerHessianOperator(problem, max_vectors=3, q_form=q_form)
    assert op.q_form == (None if q_form == "none" else q_form)
    V = torch.randn(problem.D, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scale = np.abs(H).max()  # max|A V - H V| <= 1e-10 max|H|
    problems.compare_matmat(op, H, V, 1e-10, scale)
    problems.compare_matmat(op, H, V[:, 0], 1e-10, scale)


def test_kronecker_auto_cache_form():
    """auto caches the factors when they are exact and smaller than the Q_i; a smooth
    layer after the target (tanh) makes them inexact, so the Q_i are cached instead (and
    'factor' is refused); a cache budget too small for either caches nothing."""
    x = torch.randn(12, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(12) % 2
    relu = make_problem(problems.mlp("relu", n_out=2), "fc2", x, y, "ce")  # d_out 4, K 2
    assert KroneckerHessianOperator(relu).q_form == "factor"  # 4 K + K^2 = 12 < 16 entries
    wide_k = make_problem(problems.mlp("relu", n_out=3), "fc2", x, y, "ce")
    assert KroneckerHessianOperator(wide_k).q_form == "full"  # 12 + 9 = 21 > 16
    assert KroneckerHessianOperator(relu, cache_bytes=0).q_form is None
    tanh = make_problem(problems.mlp("tanh", n_out=2), "fc2", x, y, "ce")
    op = KroneckerHessianOperator(tanh)
    assert not op.layer.ggn_exact and op.q_form == "full"
    with pytest.raises(ValueError, match="piecewise linear"):
        KroneckerHessianOperator(tanh, q_form="factor")
    # the factors of a smooth head are only the Gauss-Newton part: Q differs from them
    a, z, xx, yy = op.layer.index(range(12))
    J, S = op.layer.ggn_factors(z, xx, yy)
    Q = op.layer.q_full(z, xx, yy)
    assert (Q - J.transpose(1, 2) @ S @ J).abs().max() > 1e-3 * Q.abs().max()


def test_kronecker_refuses_non_linear_block():
    model, x, y = ref.make_model("cnn", 5)
    problem = make_problem(model, "conv", x, y, "ce")
    with pytest.raises(ValueError, match="bias-free nn.Linear"):
        KroneckerHessianOperator(problem)


@pytest.mark.parametrize("block", [1, 4, 16])
def test_block_krylov_dense_matrix(block):
    rng = np.random.default_rng(3)
    D, k = 200, 30
    U = ref.random_orthogonal(D, rng)
    lam = np.concatenate([10 * 0.85 ** np.arange(40), rng.uniform(-0.05, 0.05, D - 40)])
    A = torch.from_numpy(ref.matrix_with_spectrum(lam, U))
    out = block_krylov_eigh(lambda V: A @ V, D, k, block=block, tol=1e-10, seed=1)
    assert out.converged and out.max_residual <= 1e-10
    want = np.sort(lam)[::-1][:k]
    np.testing.assert_allclose(out.values, want, rtol=0, atol=1e-8 * want[0])
    Uk = U[:, np.argsort(lam)[::-1][:k]]
    assert ref.projector_distance(out.vectors.numpy(), Uk) < 1e-5
    # deterministic
    again = block_krylov_eigh(lambda V: A @ V, D, k, block=block, tol=1e-10, seed=1)
    problems.assert_deterministic(out.values, again.values)


def test_block_krylov_reports_non_convergence():
    D = 300
    A = torch.from_numpy(ref.matrix_with_spectrum(np.linspace(1, 0.99, D)))  # no gap at all
    out = block_krylov_eigh(lambda V: A @ V, D, 20, block=4, basis=48, tol=1e-14,
                            max_restarts=2)
    assert not out.converged and out.max_residual > 1e-14


@pytest.mark.parametrize("case", BLOCK, ids=problems.ids(BLOCK))  # D = 56
def test_block_method_on_hessian_matches_dense(case, dense, device):
    evals, evecs = dense.vals, dense.U
    k, _ = ref.gapped_k(evals, 4, 12)
    problem = make_problem(dense.model, "fc2", dense.x, dense.y, dense.loss, chunk_size=16,
                           device=device)
    for op in (HessianOperator(problem), KroneckerHessianOperator(problem)):
        basis = top_eigenpairs(op, k, method="block", block=4, tol=1e-10)
        np.testing.assert_allclose(basis.values, evals[:k], rtol=0, atol=1e-8 * abs(evals[0]))
        assert ref.projector_distance(problems.to_numpy(basis.vectors), evecs[:, :k]) < 1e-6
        assert basis.residuals.max() < 1e-8


def test_analyze_block_equals_eigsh():
    model, x, y = ref.make_model("fc", 60, hidden=(8, 7))
    kw = dict(loss="ce", batch_size=6, k=6, awd=None)
    a = analyze_checkpoint(model, "fc2", x, y, eigen={"method": "eigsh", "tol": 1e-11},
                           operator="hvp", **kw)
    b = analyze_checkpoint(model, "fc2", x, y, eigen={"method": "block", "tol": 1e-11},
                           operator="kronecker", **kw)
    np.testing.assert_allclose(a.hess_eigval, b.hess_eigval, rtol=1e-9)
    np.testing.assert_allclose(a.gamma, b.gamma, rtol=1e-6)
    for name in ("covar", "second_moment"):  # sign-invariant diagonal
        np.testing.assert_allclose(np.diag(a[name]), np.diag(b[name]), rtol=1e-6)
    assert a.attrs["operator"] == "HessianOperator"
    assert b.attrs["operator"] == "KroneckerHessianOperator"


def test_memory_budget_sets_chunks_not_numbers():
    model, x, y = ref.make_model("fc", 60, hidden=(8, 7))
    kw = dict(loss="mse", batch_size=6, k=5, eigen={"tol": 1e-12},
              awd={"draws": 3, "probe": 10, "partner_batches": 2})
    big = analyze_checkpoint(model, "fc2", x, y, **kw)
    small = analyze_checkpoint(model, "fc2", x, y, memory_budget_mb=0.02, **kw)
    assert int(big.chunk_size) == 60 and int(small.chunk_size) < 60
    for name in ("hess_eigval", "gamma", "h2_diag", "sigma_w2"):
        np.testing.assert_allclose(small[name], big[name], rtol=1e-8, atol=1e-14)
    for name in ("covar", "c_hh", "c_pair"):  # sign-invariant diagonals
        np.testing.assert_allclose(np.diag(small[name]), np.diag(big[name]), rtol=1e-8,
                                   atol=1e-14)


def test_float32_products_float64_accumulation_error():
    """float32 products with float64 accumulation against all-float64 (measured on the
    quickstart checkpoint: eigenvalues 1e-7 lambda_1, diagonals 7e-6, gamma 3e-7)."""
    model, x, y = ref.make_model("fc", 200, hidden=(12, 10))
    kw = dict(loss="ce", batch_size=10, k=12, eigen={"tol": 1e-7},
              awd={"draws": 4, "probe": 20, "partner_batches": 2})
    a = analyze_checkpoint(model, "fc2", x, y, dtype=torch.float32, **kw)
    b = analyze_checkpoint(model, "fc2", x, y, dtype=torch.float64, **kw)
    lam1 = float(b.hess_eigval[0])
    assert np.abs(a.hess_eigval - b.hess_eigval).max() < 1e-5 * lam1
    for name in ("covar", "h2", "c_pair"):
        da, db = np.diag(a[name].values), np.diag(b[name].values)
        assert np.max(np.abs(da - db) / np.abs(db)) < 1e-3, name
    assert float(np.abs(a.gamma - b.gamma).max()) < 1e-3
