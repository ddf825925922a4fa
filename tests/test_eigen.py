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

import dense_reference as ref
import numpy as np
import problems
import pytest
import torch

from awch_scale.linalg.eigen import fix_signs, top_eigenpairs
from awch_scale.model.operators import HessianOperator
from awch_scale.model.problem import make_problem

N = 30
BASES = [*problems.BASES, ("fc", "fc2")]
KW = [{}] * 5 + [{"hidden": (20, 15)}]  # the last: D = 300, Lanczos restarts for real
CASES = [problems.case(kind, target, loss, N, **kw)
         for (kind, target), kw in zip(BASES, KW, strict=True) for loss in problems.LOSSES]
MIN_GAP = 0.02  # relative spectral gap below which a subspace test would be ill-posed


def _problem(dense, device="cpu"):
    return make_problem(dense.model, dense.target, dense.x, dense.y, dense.loss, chunk_size=7,
                        device=device)


def _cases(*which):
    """The cases of the given (base index, loss) pairs."""
    return [problems.case(*BASES[i], loss, N, **KW[i]) for i, loss in which]


def _check_basis(basis, vals, U, H, k, *, eig_tol, proj_tol, res_tol):
    D = H.shape[0]
    scale = abs(vals[0])
    V = basis.vectors
    assert isinstance(V, torch.Tensor) and V.dtype == torch.float64 and V.shape == (D, k)
    V = problems.to_numpy(V)
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


@pytest.mark.parametrize("method", ["lanczos", "eigsh"])
@pytest.mark.parametrize("case", CASES, ids=problems.ids(CASES))
def test_top_eigenpairs_match_dense(case, method, dense, device):
    problem, vals, U, H = _problem(dense, device), dense.vals, dense.U, dense.H
    k_max = 10 if problem.D > 100 else 6
    k, gap = ref.gapped_k(vals, 2, k_max)
    assert gap >= MIN_GAP, f"no spectral gap in this tiny spectrum: {vals[:k_max + 1]}"
    basis = top_eigenpairs(HessianOperator(problem), k, tol=1e-12, seed=0, method=method)
    assert basis.method == method
    _check_basis(basis, vals, U, H, k, eig_tol=1e-9, proj_tol=1e-7, res_tol=1e-9)


@pytest.mark.parametrize("method", ["lanczos", "eigsh"])
@pytest.mark.parametrize("case", _cases((1, "ce"), (5, "ce")), ids=["cnn-fc1", "fc-fc2-D300"])
def test_default_tolerance(case, method, dense, device):
    problem, vals, U, H = _problem(dense, device), dense.vals, dense.U, dense.H
    k, gap = ref.gapped_k(vals, 2, 6)
    assert gap >= MIN_GAP
    basis = top_eigenpairs(HessianOperator(problem), k, seed=3, method=method)
    _check_basis(basis, vals, U, H, k, eig_tol=1e-6, proj_tol=1e-3, res_tol=1e-4)


@pytest.mark.parametrize("case", _cases((0, "ce")), ids=["fc-fc2-ce"])
def test_algebraically_largest_includes_negative_eigenvalues(case, dense, device):
    # k = D - 1 on a spectrum with negative eigenvalues: 'LA' (not largest magnitude)
    problem, vals, U = _problem(dense, device), dense.vals, dense.U
    D = problem.D
    assert vals[-1] < 0 < vals[0]
    # 'LM' would drop the eigenvalue of smallest magnitude, not the most negative one
    assert np.argmin(np.abs(vals)) != D - 1
    basis = top_eigenpairs(HessianOperator(problem), D - 1, tol=1e-12, seed=0)
    np.testing.assert_allclose(basis.values, vals[:D - 1], rtol=0, atol=1e-9 * abs(vals[0]))
    # the complement of the returned subspace is the bottom eigenvector
    V = problems.to_numpy(basis.vectors)
    assert np.linalg.norm(V.T @ U[:, -1]) <= 1e-7


def test_fix_signs_convention():
    V = torch.tensor([[0.1, -0.9, 0.0], [-0.8, 0.3, 0.0], [0.2, 0.1, 0.0]], dtype=torch.float64)
    W = V.clone()
    out = fix_signs(W)
    assert out is W  # in place: no second (D, k) array
    want = V * torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)  # a zero column stays
    torch.testing.assert_close(out, want, rtol=1e-15, atol=0)  # a sign flip is exact
    np.testing.assert_allclose(ref.fix_signs(V.numpy()), out.numpy(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("case", _cases((5, "mse")), ids=["fc-fc2-D300-mse"])
def test_deterministic_for_a_seed(case, dense, device):
    problem, vals = _problem(dense, device), dense.vals
    k = ref.gapped_k(vals, 2, 10)[0]
    a = top_eigenpairs(HessianOperator(problem), k, seed=7)
    b = top_eigenpairs(HessianOperator(problem), k, seed=7)
    for name in ("vectors", "values", "residuals"):  # same seed: same numbers (rtol 1e-12)
        problems.assert_deterministic(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.n_products == b.n_products
    # another seed: another start vector, same subspace and (sign-fixed) vectors
    c = top_eigenpairs(HessianOperator(problem), k, seed=8)
    assert ref.projector_distance(problems.to_numpy(a.vectors),
                                  problems.to_numpy(c.vectors)) <= 1e-3
    np.testing.assert_allclose(c.values, a.values, rtol=0, atol=1e-6 * abs(vals[0]))


@pytest.mark.parametrize("case", _cases((2, "ce")), ids=["cnn-conv-ce"])
@pytest.mark.parametrize("k", [0, -1, "D", "D+1"])
def test_invalid_k_raises(k, case, dense):
    problem = _problem(dense)
    k = {"D": problem.D, "D+1": problem.D + 1}.get(k, k)
    with pytest.raises(ValueError, match="k"):
        top_eigenpairs(HessianOperator(problem), k)


def test_block_solver_warm_start_from_a_guess():
    """start= only changes the speed: the same eigenpairs from a nearby basis, and fewer
    products from the exact one (the Fisher starts from the Hessian's V this way)."""
    from awch_scale.linalg.krylov import block_krylov_eigh

    rng = np.random.default_rng(0)
    D, k = 300, 20
    Q = ref.random_orthogonal(D, rng)
    lam = 1.0 / np.arange(1, D + 1) ** 1.2
    A = torch.from_numpy(ref.matrix_with_spectrum(lam, Q))

    def mm(V):
        return A @ V

    cold = block_krylov_eigh(mm, D, k, block=8, tol=1e-9, seed=1)
    near = torch.from_numpy(Q[:, :k] + 1e-3 * rng.standard_normal((D, k)))
    warm = block_krylov_eigh(mm, D, k, block=8, tol=1e-9, seed=1, start=near)
    assert cold.converged and warm.converged
    np.testing.assert_allclose(warm.values, lam[:k], rtol=1e-8)
    np.testing.assert_allclose(cold.values, lam[:k], rtol=1e-8)
    exact = block_krylov_eigh(mm, D, k, block=8, tol=1e-9, seed=1,
                              start=torch.from_numpy(Q[:, :k].copy()))
    np.testing.assert_allclose(exact.values, lam[:k], rtol=1e-8)
    assert exact.n_restarts == 0 and exact.n_products < cold.n_products


def test_auto_switch_rule_on_measured_times():
    """Lanczos below BLOCK_FROM_K; above it, Lanczos exactly when one single-vector
    product costs at most PRODUCT_RATIO times the per-vector cost inside a block product."""
    from awch_scale.linalg.eigen import BLOCK_FROM_K, PRODUCT_RATIO, pick_method

    assert pick_method(BLOCK_FROM_K - 1, 100.0, 1.0, 32) == "lanczos"  # small k: always
    per_vector = 1.0 / 32
    assert pick_method(50, PRODUCT_RATIO * per_vector * 0.99, 1.0, 32) == "lanczos"
    assert pick_method(50, PRODUCT_RATIO * per_vector * 1.01, 1.0, 32) == "block"


def test_auto_resolves_and_reports_the_method():
    """``auto`` with k >= BLOCK_FROM_K times 2 + b products, names the solver it ran, and
    gives the same eigenvalues as either solver run by name (1e-8 relative to lambda_1)."""
    from awch_scale.linalg.eigen import BLOCK_FROM_K, choose_method

    model, x, y = ref.make_model("fc", 40, hidden=(10, 8))
    problem = make_problem(model, "fc2", x, y, "ce", dtype=torch.float64)  # D = 80
    op = HessianOperator(problem)
    k = BLOCK_FROM_K
    n0 = op.n_products
    picked = choose_method(op, k, block=8)
    assert picked in ("lanczos", "block") and op.n_products - n0 == 2 + 8
    auto = top_eigenpairs(op, k, method="auto", block=8, tol=1e-10)
    assert auto.method in ("lanczos", "block")
    for method in ("lanczos", "eigsh", "block"):
        named = top_eigenpairs(op, k, method=method, block=8, tol=1e-10)
        assert named.method == method
        np.testing.assert_allclose(auto.values, named.values, rtol=0,
                                   atol=1e-8 * abs(named.values[0]))
