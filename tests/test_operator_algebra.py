"""Operator algebra and the gradient operators (M, C, H_p) against dense float64.

Dense references (tests/dense_reference.py): H by ``torch.func.hessian``, per-sample
gradients by an explicit loop, M = (1/N) sum g_i g_i^T, C = (1/B)(M - g g^T).
Tolerance: max|A - B| <= 1e-10 * max|B| (float64 round-off; observed ~5e-16).
"""

from __future__ import annotations

import functools

import dense_reference as ref
import numpy as np
import pytest
import torch

from awch_scale.linalg.eigen import top_eigenpairs
from awch_scale.model.operators import (
    CovarianceOperator,
    HessianOperator,
    KroneckerHessianOperator,
    LinearCombination,
    LowRankOperator,
    SecondMomentOperator,
)
from awch_scale.model.problem import make_problem

N, B = 30, 8
RTOL = 1e-10
CASES = [("fc", "fc2", "ce"), ("fc", "fc2", "mse"), ("cnn", "fc1", "lmse"),
         ("cnn", "conv", "ce"), ("fc", "out", "lmse")]
IDS = ["-".join(c) for c in CASES]


@functools.cache
def setup(kind, target, loss):
    model, x, y = ref.make_model(kind, N)
    problem = make_problem(model, target, x, y, loss, chunk_size=7)
    G = ref.per_sample_gradients(model, target, x, y, loss)
    H = ref.dense_hessian(model, target, x, y, loss)
    return problem, G, H


def close(actual, expected, rtol=RTOL):
    actual = np.asarray(actual.cpu() if torch.is_tensor(actual) else actual)
    err = np.abs(actual - expected).max()
    assert err <= rtol * np.abs(expected).max(), err


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_second_moment_and_covariance(case):
    problem, G, _ = setup(*case)
    M = SecondMomentOperator(problem)
    assert M.structure == ("generic" if case[1] == "conv" else "linear")
    close(M.to_dense(), ref.dense_second_moment(G))
    close(M.mean_gradient(), G.mean(0))
    close(CovarianceOperator(M, B).to_dense(), ref.dense_covariance(G, B))


@pytest.mark.parametrize("case", [c for c in CASES if c[1] != "conv"], ids=IDS[:3] + IDS[4:])
def test_linear_and_generic_second_moment_agree(case):
    problem, G, _ = setup(*case)
    gen = SecondMomentOperator(problem, structure="generic", cache_bytes=0)
    assert not gen.cached  # the recomputing path
    close(gen.to_dense(), ref.dense_second_moment(G))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compositions(case):
    problem, G, H = setup(*case)
    hess = HessianOperator(problem)
    M = SecondMomentOperator(problem)
    Md = ref.dense_second_moment(G)
    close((M - hess).to_dense(), Md - H)
    close((hess - M).to_dense(), H - Md)
    close((-hess).to_dense(), -H)
    close((2.5 * hess + M * 0.5).to_dense(), 2.5 * H + 0.5 * Md)
    close((hess / 4.0).to_dense(), H / 4.0)
    X = torch.randn(problem.D, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    close((M - hess) @ X, (Md - H) @ X.numpy())
    close((M - hess) @ X[:, 0], (Md - H) @ X[:, 0].numpy())
    sc = (M - hess).to_scipy()
    close(sc @ X.numpy(), (Md - H) @ X.numpy())
    close(sc.matvec(X[:, 0].numpy()), (Md - H) @ X[:, 0].numpy())


def test_flattening_counters_and_errors():
    problem, G, H = setup("fc", "fc2", "ce")
    hess, kron = HessianOperator(problem), KroneckerHessianOperator(problem)
    M = SecondMomentOperator(problem)
    comb = 2.0 * (M - hess) - kron
    assert isinstance(comb, LinearCombination) and len(comb.terms) == 3
    assert [c for c, _ in comb.terms] == [2.0, -2.0, -1.0]
    assert comb.shape == (problem.D, problem.D) and comb.dtype == torch.float64
    assert comb.device == problem.device
    comb.matmat(torch.zeros(problem.D, 4, dtype=torch.float64))
    assert comb.n_products == 4 and hess.n_products == 4 and M.n_products == 4
    with pytest.raises(TypeError):
        _ = hess @ hess
    with pytest.raises(TypeError):
        _ = hess + 1.0
    other = make_problem(*ref.make_model("fc", N)[:1], "fc1", *ref.make_model("fc", N)[1:],
                         "ce")
    with pytest.raises(ValueError, match="shapes"):
        _ = hess + HessianOperator(other)
    g = torch.as_tensor(G.mean(0))
    lr = LowRankOperator(problem, g, torch.tensor([3.0]))
    close(lr.to_dense(), 3.0 * np.outer(G.mean(0), G.mean(0)))


@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_top_eigenpairs_of_compositions(case):
    """eigen.top_eigenpairs (eigsh and block) on C and M - H; values within 1e-8 |lam_1|."""
    problem, G, H = setup(*case)
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
