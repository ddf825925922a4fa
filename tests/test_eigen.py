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


def test_auto_rule_picks_the_measured_faster_solver():
    """The rule of ``auto`` (no timing): lanczos below BLOCK_FROM_K; above it, block
    exactly where the committed product ratio of the operator kind at D exceeds
    PRODUCT_RATIO. On every committed measurement with both solvers it picks the faster
    one, and the dtype and device type do not change the choice."""
    import json
    from pathlib import Path

    from awch_scale.linalg.eigen import (
        BLOCK_FROM_K,
        MEASURED_RATIOS,
        PRODUCT_RATIO,
        choice_rule,
        product_ratio,
    )

    for kind, points in MEASURED_RATIOS.items():
        for D, ratio in points:
            assert product_ratio(kind, D) == pytest.approx(ratio, rel=1e-12)
            assert choice_rule(D, BLOCK_FROM_K - 1, kind, "float32", "cpu")["method"] == \
                "lanczos"  # small k: always
    assert product_ratio("kronecker", 10) == 7.26 and product_ratio("kronecker", 1e8) == 1.3
    assert product_ratio("kronecker", 5_000) == pytest.approx(
        7.26 + (4.44 - 7.26) * np.log(2) / np.log(4))  # linear in log D in between
    # the switch of the Kronecker operator lies between the measured D = 2500 and 1e4
    switch = 2_500 * 4 ** ((7.26 - PRODUCT_RATIO) / (7.26 - 4.44))
    assert choice_rule(int(switch) - 1, 50, "kronecker", "float32", "cpu")["method"] == "block"
    assert choice_rule(int(switch) + 1, 50, "kronecker", "float32", "cpu")["method"] == \
        "lanczos"
    rows = json.loads((Path(__file__).parents[1] / "benchmarks/results/cpu-eigen-switch.json"
                       ).read_text())["rows"]
    checked = 0
    for row in rows:
        if not ("lanczos" in row and "block" in row):
            continue
        kind = "kronecker" if row["operator"] == "kronecker" else "generic"
        faster = min(("lanczos", "block"), key=lambda m: row[m]["seconds"])
        for dtype in ("float32", "float64"):
            for device in ("cpu", "cuda"):
                got = choice_rule(row["D"], row["k"], kind, dtype, device)
                assert got["method"] == faster, row["shape"]
                assert got["D"] == row["D"] and got["k"] == row["k"]
                assert (got["operator"], got["dtype"], got["device"]) == (kind, dtype, device)
                assert got["product_ratio"] == pytest.approx(row["ratio"], abs=0.02)
        checked += 1
    assert checked == 5
    json.dumps(choice_rule(2_500, 50, "generic", "float64", "cuda"))  # provenance-ready


def test_auto_resolves_and_reports_the_method():
    """``auto`` runs no product to choose, names the solver it ran and records the rule's
    inputs, and gives the same eigenvalues as either solver run by name (1e-8 relative to
    lambda_1). The generic HVP takes lanczos, the Kronecker operator of a small block
    (D = 80) block; a named method is recorded as such."""
    from awch_scale.linalg.eigen import BLOCK_FROM_K, choose_method, solver_choice
    from awch_scale.model.operators import KroneckerHessianOperator

    model, x, y = ref.make_model("fc", 40, hidden=(10, 8))
    problem = make_problem(model, "fc2", x, y, "ce", dtype=torch.float64)  # D = 80
    k = BLOCK_FROM_K
    for op, want, kind in ((HessianOperator(problem), "lanczos", "generic"),
                           (KroneckerHessianOperator(problem), "block", "kronecker")):
        n0 = op.n_products
        assert choose_method(op, k) == want and op.n_products == n0
        auto = top_eigenpairs(op, k, method="auto", block=8, tol=1e-10)
        assert auto.method == want
        assert auto.choice == {**solver_choice(op, k), "method": want}
        assert {key: auto.choice[key] for key in ("D", "k", "operator", "dtype", "device")} \
            == {"D": 80, "k": k, "operator": kind, "dtype": "float64", "device": "cpu"}
        assert choose_method(-1.0 * op, k) == want  # a combination: its terms' kind
        for method in ("lanczos", "eigsh", "block"):
            named = top_eigenpairs(op, k, method=method, block=8, tol=1e-10)
            assert named.method == method
            assert named.choice["method"] == method and named.choice["rule"] == "named"
            np.testing.assert_allclose(auto.values, named.values, rtol=0,
                                       atol=1e-8 * abs(named.values[0]))


class _Clock:
    """A stand-in for the ``time`` module whose ``perf_counter`` advances by the next
    step of ``steps`` (cycled) at each call: a machine whose load changes between calls."""

    def __init__(self, steps):
        self.steps, self.now, self.calls = list(steps), 0.0, 0

    def perf_counter(self) -> float:
        self.now += self.steps[self.calls % len(self.steps)]
        self.calls += 1
        return self.now


def test_auto_does_not_depend_on_timing(monkeypatch):
    """Issue 18: the solver and every number are the same whatever the clock says. With
    the timing rule these two clocks took different solvers (every interval equal: the
    32-vector product looks 32x cheaper per vector, block; the block product 1000x
    slower than a single one: lanczos)."""
    from awch_scale.linalg import eigen
    from awch_scale.model.operators import KroneckerHessianOperator

    model, x, y = ref.make_model("fc", 41, hidden=(10, 8))
    problem = make_problem(model, "fc2", x, y, "ce", chunk_size=5, dtype=torch.float64)
    runs = []
    for steps in ([1.0], [1.0] * 6 + [1000.0], None):
        if steps is not None:
            monkeypatch.setattr(eigen, "time", _Clock(steps))
        else:
            monkeypatch.undo()
        op = KroneckerHessianOperator(problem)
        runs.append(top_eigenpairs(op, eigen.BLOCK_FROM_K, method="auto", block=8, tol=1e-10,
                                   seed=2))
    for other in runs[1:]:
        assert other.method == runs[0].method and other.choice == runs[0].choice
        assert other.n_products == runs[0].n_products
        np.testing.assert_array_equal(other.values, runs[0].values)
        np.testing.assert_array_equal(other.residuals, runs[0].residuals)
        assert torch.equal(other.vectors, runs[0].vectors)


def test_stored_numbers_do_not_depend_on_timing(monkeypatch):
    """analyze_checkpoint with ``auto`` eigensolvers (Hessian, Fisher) on a busy and on an
    erratic clock: every stored number is identical, and the provenance records the
    rule's inputs and choice (``eigen_choice``)."""
    import json
    import time

    from awch_scale.analysis.checkpoint import analyze_checkpoint

    model, x, y = ref.make_model("fc", 41, hidden=(10, 8))
    stores = []
    for steps in ([1e-3], [1e-6, 5.0, 1e-4, 0.3, 2e-2]):
        monkeypatch.setattr(time, "perf_counter", _Clock(steps).perf_counter)
        stores.append(analyze_checkpoint(
            model, "fc2", x, y, loss="ce", batch_size=6, k=32, device="cpu",
            dtype=torch.float64, chunk_size=9, awd=None, stats=None, spectra=None,
            suppression=None, fisher={"eigval": True}))
    monkeypatch.undo()
    a, b = stores
    for name in a.data_vars:
        if str(name).startswith("seconds_"):
            continue
        if a[name].dtype.kind in "fciub":
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=str(name))
    prov = [json.loads(str(ds.provenance.values)) for ds in stores]
    assert prov[0]["eigen_choice"] == prov[1]["eigen_choice"]
    assert prov[0]["eigen_choice"]["method"] == prov[0]["eigen_method"] == "block"
    assert {key: prov[0]["eigen_choice"][key] for key in ("D", "k", "operator", "dtype",
                                                          "device")} == \
        {"D": 80, "k": 32, "operator": "kronecker", "dtype": "float64", "device": "cpu"}


def test_projection_in_column_groups():
    """``projected``: V^T A V (1e-12 of max |A|) from products with at most ``columns``
    columns of V, so the (D, k) image is never held whole."""
    from awch_scale.analysis.spectra_solvers import DenseOperator
    from awch_scale.linalg.eigen import projected

    gen = torch.Generator().manual_seed(3)
    A = torch.randn(40, 40, dtype=torch.float64, generator=gen)
    A = A + A.T
    V = torch.linalg.qr(torch.randn(40, 11, dtype=torch.float64, generator=gen)).Q
    op = DenseOperator(A)
    widths = []
    inner = op.matmat
    op.matmat = lambda W: (widths.append(W.shape[1]), inner(W))[1]
    got = projected(op, V, 3)
    assert widths == [3, 3, 3, 2]
    np.testing.assert_allclose(got.numpy(), (V.T @ A @ V).numpy(), rtol=0,
                               atol=1e-12 * A.abs().max().item())


def test_permute_columns_in_place():
    """``permute_columns`` equals V[:, order] and writes into V itself (no (D, k) copy)."""
    from awch_scale.linalg.eigen import permute_columns

    V = torch.randn(50_000, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = V[:, [3, 0, 6, 1, 2, 5, 4]].clone()
    ptr = V.data_ptr()
    out = permute_columns(V, torch.tensor([3, 0, 6, 1, 2, 5, 4]), rows=4096)
    assert out.data_ptr() == ptr
    torch.testing.assert_close(out, want, rtol=0, atol=0)
