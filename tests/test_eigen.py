"""top_eigenpairs (Lanczos on the matrix-free Hessian) against torch.linalg.eigh of the dense one.

k is chosen where the dense spectrum has a gap (dense_reference.gapped_k), so the
top-k subspace is well defined; it is compared through projectors
||V V^T - U U^T||_2 (the sine of the largest principal angle), and single
eigenvectors only where their eigenvalue is separated from all others.

Tolerances (relative to |lambda_1|; observed errors are ~1e-15 on these sizes):

- tol=1e-12: eigenvalues 1e-9, projector distance 1e-7, residuals 1e-9;
- default tol (1e-6): eigenvalues 1e-6, projector distance 1e-3, residuals 1e-4.
"""

from __future__ import annotations

import functools

import dense_reference as ref
import numpy as np
import pytest
import torch

from awch_scale.eigen import fix_signs, top_eigenpairs
from awch_scale.operators import HessianOperator
from awch_scale.problem import make_problem

N = 30
CASES = [
    ("fc", "fc2", {}),
    ("cnn", "fc1", {}),
    ("cnn", "conv", {}),
    ("fc", ("fc2.weight", "out.weight"), {}),
    ("cnn", ("conv.weight", "fc1.weight"), {}),
    ("fc", "fc2", {"hidden": (20, 15)}),  # D = 300: Lanczos restarts for real
]
CASE_IDS = ["fc-fc2", "cnn-fc1", "cnn-conv", "fc-fc2+out", "cnn-conv+fc1", "fc-fc2-D300"]
MIN_GAP = 0.02  # relative spectral gap below which a subspace test would be ill-posed


@functools.cache
def setup(kind, target, loss, kw=()):
    """(problem, dense eigenvalues desc, dense eigenvectors, dense H)."""
    model, x, y = ref.make_model(kind, N, **dict(kw))
    H = ref.dense_hessian(model, ref.as_target(target), x, y, loss)
    vals, U = ref.dense_eigh(H)
    problem = make_problem(model, ref.as_target(target), x, y, loss, chunk_size=7)
    return problem, vals, U, H


def _case(case, loss):
    kind, target, kw = case
    return setup(kind, target, loss, tuple(sorted(kw.items())))


def _check_basis(basis, vals, U, H, k, *, eig_tol, proj_tol, res_tol):
    D = H.shape[0]
    scale = abs(vals[0])
    V = basis.vectors
    assert isinstance(V, torch.Tensor) and V.dtype == torch.float64 and V.shape == (D, k)
    V = V.numpy()
    assert basis.values.shape == (k,) and basis.residuals.shape == (k,)
    assert np.all(np.diff(basis.values) <= 0), "eigenvalues must be sorted descending"
    # algebraically largest eigenvalues
    np.testing.assert_allclose(basis.values, vals[:k], rtol=0, atol=eig_tol * scale)
    # orthonormal columns
    np.testing.assert_allclose(V.T @ V, np.eye(k), rtol=0, atol=1e-10)
    # same invariant subspace
    assert ref.projector_distance(V, U[:, :k]) <= proj_tol
    # sign convention: the entry of largest magnitude of each column is positive
    for j in range(k):
        assert V[np.argmax(np.abs(V[:, j])), j] > 0
    # residuals: as documented, and small
    own = np.linalg.norm(H @ V - V * basis.values, axis=0) / scale
    np.testing.assert_allclose(basis.residuals, own, rtol=0, atol=1e-12 + 1e-6 * own.max())
    assert basis.residuals.max() <= res_tol
    # eigenvectors whose eigenvalue is isolated match one by one (up to sign)
    for i in ref.separated_indices(vals, k, MIN_GAP):
        err = min(np.linalg.norm(V[:, i] - U[:, i]), np.linalg.norm(V[:, i] + U[:, i]))
        assert err <= proj_tol / MIN_GAP, f"eigenvector {i}: error {err:.2e}"
    assert basis.n_products >= k and basis.seconds >= 0


@pytest.mark.parametrize("loss", ["ce", "mse", "lmse"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_top_eigenpairs_match_dense(case, loss):
    problem, vals, U, H = _case(case, loss)
    k_max = 10 if problem.D > 100 else 6
    k, gap = ref.gapped_k(vals, 2, k_max)
    assert gap >= MIN_GAP, f"no spectral gap in this tiny spectrum: {vals[:k_max + 1]}"
    basis = top_eigenpairs(HessianOperator(problem), k, tol=1e-12, seed=0)
    _check_basis(basis, vals, U, H, k, eig_tol=1e-9, proj_tol=1e-7, res_tol=1e-9)


@pytest.mark.parametrize("case", [CASES[1], CASES[5]], ids=[CASE_IDS[1], CASE_IDS[5]])
def test_default_tolerance(case):
    problem, vals, U, H = _case(case, "ce")
    k, gap = ref.gapped_k(vals, 2, 6)
    assert gap >= MIN_GAP
    basis = top_eigenpairs(HessianOperator(problem), k, seed=3)
    _check_basis(basis, vals, U, H, k, eig_tol=1e-6, proj_tol=1e-3, res_tol=1e-4)


def test_algebraically_largest_includes_negative_eigenvalues():
    # k = D - 1 on a spectrum with negative eigenvalues: 'LA' (not largest magnitude)
    problem, vals, U, H = _case(CASES[0], "ce")
    D = problem.D
    assert vals[-1] < 0 < vals[0]
    # 'LM' would drop the eigenvalue of smallest magnitude, not the most negative one
    assert np.argmin(np.abs(vals)) != D - 1
    basis = top_eigenpairs(HessianOperator(problem), D - 1, tol=1e-12, seed=0)
    np.testing.assert_allclose(basis.values, vals[:D - 1], rtol=0, atol=1e-9 * abs(vals[0]))
    # the complement of the returned subspace is the bottom eigenvector
    V = basis.vectors.numpy()
    assert np.linalg.norm(V.T @ U[:, -1]) <= 1e-7


def test_fix_signs_convention():
    V = torch.tensor([[0.1, -0.9, 0.0], [-0.8, 0.3, 0.0], [0.2, 0.1, 0.0]], dtype=torch.float64)
    out = fix_signs(V)
    assert torch.equal(out[:, 0], -V[:, 0]) and torch.equal(out[:, 1], -V[:, 1])
    assert torch.equal(out[:, 2], V[:, 2])  # a zero column is left as it is
    np.testing.assert_array_equal(ref.fix_signs(V.numpy()), out.numpy())


def test_deterministic_for_a_seed():
    problem, vals, U, H = _case(CASES[5], "mse")
    k = ref.gapped_k(vals, 2, 10)[0]
    a = top_eigenpairs(HessianOperator(problem), k, seed=7)
    b = top_eigenpairs(HessianOperator(problem), k, seed=7)
    assert torch.equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.residuals, b.residuals)
    assert a.n_products == b.n_products
    # another seed: another start vector, same subspace and (sign-fixed) vectors
    c = top_eigenpairs(HessianOperator(problem), k, seed=8)
    assert ref.projector_distance(a.vectors.numpy(), c.vectors.numpy()) <= 1e-3
    np.testing.assert_allclose(c.values, a.values, rtol=0, atol=1e-6 * abs(vals[0]))


@pytest.mark.parametrize("k", [0, -1, "D", "D+1"])
def test_invalid_k_raises(k):
    problem, *_ = _case(CASES[2], "ce")
    k = {"D": problem.D, "D+1": problem.D + 1}.get(k, k)
    with pytest.raises(ValueError, match="k"):
        top_eigenpairs(HessianOperator(problem), k)
