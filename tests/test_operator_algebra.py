"""Operator algebra and the gradient operators (M, C, H_p) against dense float64, every
case on every device; and the operator protocol (one final ``matmat``, checked sums).

Dense references (tests/dense_reference.py): H by ``torch.func.hessian``, per-sample
gradients by an explicit loop, M = (1/N) sum g_i g_i^T, C = (1/B)(M - g g^T).
Tolerance: max|A - B| <= 1e-10 * max|B| (float64 round-off; observed ~5e-16).
"""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import problems
import pytest
import torch

from awch_scale.linalg.eigen import top_eigenpairs
from awch_scale.model.operators import (
    CovarianceOperator,
    HessianOperator,
    IdentityOperator,
    KroneckerHessianOperator,
    LinearCombination,
    LowRankOperator,
    OperatorAlgebra,
    SecondMomentOperator,
)
from awch_scale.model.problem import make_problem
from awch_scale.world import SINGLE, World

N, B = 30, 8
RTOL = 1e-10
CASES = problems.on_devices([problems.case(kind, target, loss, N) for kind, target, loss in [
    ("fc", "fc2", "ce"), ("fc", "fc2", "mse"), ("cnn", "fc1", "lmse"), ("cnn", "conv", "ce"),
    ("fc", "out", "lmse")]])
IDS = problems.ids(CASES)
LINEAR = [c for c in CASES if c.target != "conv"]
FIRST3 = [c for c in CASES if c.id in ("fc-fc2-ce", "fc-fc2-mse", "cnn-fc1-lmse")]
FC_CE = [c for c in CASES if c.id == "fc-fc2-ce"]


def _problem(dense, device):
    return make_problem(dense.model, dense.target, dense.x, dense.y, dense.loss, chunk_size=7,
                        device=device)


def close(actual, expected, rtol=RTOL):
    actual = problems.to_numpy(actual)
    err = np.abs(actual - expected).max()
    assert err <= rtol * np.abs(expected).max(), err


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_second_moment_and_covariance(case, dense, device):
    problem, G = _problem(dense, device), dense.G
    M = SecondMomentOperator(problem)
    assert M.structure == ("generic" if case.target == "conv" else "linear")
    close(M.to_dense(), ref.dense_second_moment(G))
    close(M.mean_gradient(), G.mean(0))
    close(CovarianceOperator(M, B).to_dense(), ref.dense_covariance(G, B))


@pytest.mark.parametrize("case", LINEAR, ids=problems.ids(LINEAR))
def test_linear_and_generic_second_moment_agree(case, dense, device):
    problem, G = _problem(dense, device), dense.G
    gen = SecondMomentOperator(problem, structure="generic", cache_bytes=0)
    assert not gen.cached  # the recomputing path
    close(gen.to_dense(), ref.dense_second_moment(G))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compositions(case, dense, device):
    problem, G, H = _problem(dense, device), dense.G, dense.H
    hess = HessianOperator(problem)
    M = SecondMomentOperator(problem)
    Md = ref.dense_second_moment(G)
    close((M - hess).to_dense(), Md - H)
    close((hess - M).to_dense(), H - Md)
    close((-hess).to_dense(), -H)
    close((2.5 * hess + M * 0.5).to_dense(), 2.5 * H + 0.5 * Md)
    close((hess / 4.0).to_dense(), H / 4.0)
    X = torch.randn(problem.D, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    close((M - hess) @ X, (Md - H) @ X.numpy())  # a CPU block: moved to the device
    close((M - hess) @ X[:, 0], (Md - H) @ X[:, 0].numpy())
    sc = (M - hess).to_scipy()
    close(sc @ X.numpy(), (Md - H) @ X.numpy())
    close(sc.matvec(X[:, 0].numpy()), (Md - H) @ X[:, 0].numpy())


@pytest.mark.parametrize("case", FC_CE, ids=problems.ids(FC_CE))
def test_flattening_counters_and_errors(case, dense, device):
    problem, G = _problem(dense, device), dense.G
    hess, kron = HessianOperator(problem), KroneckerHessianOperator(problem)
    M = SecondMomentOperator(problem)
    comb = 2.0 * (M - hess) - kron
    assert isinstance(comb, LinearCombination) and len(comb.terms) == 3
    assert [c for c, _ in comb.terms] == [2.0, -2.0, -1.0]
    assert comb.shape == (problem.D, problem.D) and comb.dtype == torch.float64
    assert comb.device == problem.device
    comb.matmat(torch.zeros(problem.D, 4, dtype=torch.float64, device=device))
    assert comb.n_products == 4 and hess.n_products == 4 and M.n_products == 4
    with pytest.raises(TypeError):
        _ = hess @ hess
    with pytest.raises(TypeError):
        _ = hess + 1.0
    other = make_problem(*ref.make_model("fc", N)[:1], "fc1", *ref.make_model("fc", N)[1:],
                         "ce", device=device)
    with pytest.raises(ValueError, match="shapes"):
        _ = hess + HessianOperator(other)
    g = torch.as_tensor(G.mean(0), device=device)
    lr = LowRankOperator(problem, g, torch.tensor([3.0]))
    close(lr.to_dense(), 3.0 * np.outer(G.mean(0), G.mean(0)))


@pytest.mark.parametrize("case", FIRST3, ids=problems.ids(FIRST3))
def test_top_eigenpairs_of_compositions(case, dense, device):
    """eigen.top_eigenpairs (eigsh and block) on C and M - H; values within 1e-8 |lam_1|."""
    problem, G, H = _problem(dense, device), dense.G, dense.H
    M = SecondMomentOperator(problem)
    Hp = M - HessianOperator(problem)
    want = np.linalg.eigvalsh(ref.dense_second_moment(G) - H)[::-1]
    got = top_eigenpairs(Hp, 3, method="eigsh", tol=1e-10).values
    assert np.abs(got - want[:3]).max() <= 1e-8 * abs(want[0])
    # H - M (the bottom of H_p) with the block solver: its top is H's, well separated.
    # (The block solver is not used for the top of M - H: there the wanted eigenvalues
    # are small against the spectral spread |lambda_min(M - H)| and it stalls.)
    got = top_eigenpairs(-Hp, 3, method="block", tol=1e-10, block=4).values
    assert np.abs(got + want[::-1][:3]).max() <= 1e-8 * abs(want[-1])
    C = CovarianceOperator(M, B)
    want_c = np.linalg.eigvalsh(ref.dense_covariance(G, B))[::-1]
    got_c = top_eigenpairs(C, 3, method="eigsh", tol=1e-10).values
    assert np.abs(got_c - want_c[:3]).max() <= 1e-8 * want_c[0]


class Dense(OperatorAlgebra):
    """A held matrix as an operator: the protocol's whole burden is ``_matmat``."""

    def __init__(self, A: torch.Tensor, compute_dtype: torch.dtype = torch.float64):
        self.A, self._compute = A, compute_dtype
        self.seen: list[tuple] = []

    shape = property(lambda self: tuple(self.A.shape))
    device = property(lambda self: self.A.device)
    compute_dtype = property(lambda self: self._compute)

    def _matmat(self, V):
        self.seen.append((tuple(V.shape), V.dtype, V.device))
        return self.A @ V


def test_matmat_tidies_counts_and_squeezes(device):
    """The one public matmat: any tensor or array, on any device, (D,) or (D, m), in any
    float dtype reaches _matmat as a float64 (D, m) block on the operator's device."""
    A = torch.arange(9.0, dtype=torch.float64, device=device).reshape(3, 3)
    op = Dense(A)
    v = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    out = op.matmat(v)
    assert out.shape == (3,) and out.dtype == torch.float64 and out.device == A.device
    close(out, problems.to_numpy(A) @ v)
    out = op @ torch.ones(3, 2)  # float32 on the CPU
    assert out.shape == (3, 2)
    assert op.seen == [((3, 1), torch.float64, A.device), ((3, 2), torch.float64, A.device)]
    assert op.n_products == 3
    for bad in (torch.ones(4), torch.ones(2, 3), torch.ones(3, 2, 1)):
        with pytest.raises(ValueError, match=r"shape \(3,\) or \(3, m\)"):
            op.matmat(bad)
    assert op.n_products == 3  # a refused input is no product


def test_matmat_is_final():
    with pytest.raises(TypeError, match="implement _matmat"):
        type("Bad", (OperatorAlgebra,), {"matmat": lambda self, V: V})


def test_sums_check_shape_device_and_dtype():
    """A sum of operators of another shape, device, result dtype or compute dtype is
    refused with a ValueError naming both (curvlinops' _check_same_device/_dtype)."""
    A = Dense(torch.eye(3, dtype=torch.float64))
    close((A + A - 3 * A).to_dense(), -np.eye(3))
    with pytest.raises(ValueError, match="shapes: \\(3, 3\\), \\(2, 2\\)"):
        _ = A + Dense(torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="devices: cpu, meta"):
        _ = A - Dense(torch.empty(3, 3, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match="compute dtypes: torch.float64, torch.float32"):
        _ = A + Dense(torch.eye(3, dtype=torch.float64), torch.float32)

    class Single(Dense):
        dtype = property(lambda self: torch.float32)

    with pytest.raises(ValueError, match="dtypes: torch.float64, torch.float32"):
        _ = A + Single(torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("case", FC_CE, ids=problems.ids(FC_CE))
def test_world_is_a_null_object(case, dense, device):
    """Operators default to the one-process world (no None anywhere); None still means it,
    and a composition reports the world of its sharded terms."""
    problem = _problem(dense, device)
    for op in (HessianOperator(problem), KroneckerHessianOperator(problem, world=None),
               SecondMomentOperator(problem), IdentityOperator(problem)):
        assert op.world is SINGLE
    assert (HessianOperator(problem) - IdentityOperator(problem)).world is SINGLE
    two = World(rank=0, size=2)
    hess = HessianOperator(problem, world=two)
    assert hess.world is two and (IdentityOperator(problem) + 2 * hess).world is two
