"""The issue-10 speed paths against independent float64 references.

- ``projected_gradients`` on the ``linear`` route (P[i] = Y(a_i)^T delta_i, no per-sample
  D-vector) equals V^T g_i from the explicit per-sample autograd loop of
  dense_reference (tolerance 1e-10 relative to max |P|), for FC/CNN Linear targets and
  the three losses, with its own and with the Kronecker operator's TargetLayer, on
  every device.
- ``KronMoments`` fed the Kronecker operator's cached Q_p (``q_source``) equals
  ``AutodiffMoments`` (weight-space HVPs) to 1e-10 relative, on both routes.
- the rewritten Kronecker product (two GEMMs) equals the dense Hessian (1e-10).
- ``HessianOperator`` in both modes (``reverse``: the chunk's gradient graph kept and
  reused across vector blocks; ``forward``: vmapped jvp-of-grad) equals the dense
  Hessian (1e-10 relative) on FC and conv targets, including a repeated call, on every
  device.
- ``top_eigenpairs(rel_to="self")`` (per-eigenvalue stopping rule) meets
  ||A v_i - lambda_i v_i|| <= tol |lambda_i| for every i against dense eigh, on a
  matrix whose spectrum spans 8 decades, where the lambda_1-relative rule does not;
  under both rules every Ritz value is within its own residual of lambda_i.
"""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import problems
import pytest
import torch

from awch_scale.analysis.awd.accumulate import MomentSum
from awch_scale.analysis.awd.moments import AutodiffMoments, KronMoments
from awch_scale.model.operators import KroneckerHessianOperator
from awch_scale.model.per_sample import projected_gradients
from awch_scale.model.problem import make_problem
from awch_scale.model.projection import RankOneBasis
from awch_scale.model.target import TargetLayer


def _basis(D: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(D, k, dtype=torch.float64, generator=g))[0]


LINEAR = problems.cases([("fc", "fc2"), ("fc", "fc1"), ("cnn", "fc1")], problems.LOSSES, 19)
MODES = problems.cases([("fc", "fc2"), ("cnn", "conv"), ("cnn", "fc1")], ["ce"], 21)


@pytest.mark.parametrize("case", LINEAR, ids=problems.ids(LINEAR))
@pytest.mark.parametrize("shared", [False, True])
def test_linear_projected_gradients_equal_dense(case, dense, device, shared):
    G = dense.G
    problem = make_problem(dense.model, dense.target, dense.x, dense.y, dense.loss,
                           chunk_size=6, device=device)
    V = _basis(problem.D, 4).to(device)
    layer = KroneckerHessianOperator(problem).layer if shared else None
    P = projected_gradients(problem, V, layer=layer)  # auto = linear route here
    want = G @ problems.to_numpy(V)
    assert problem.linear_name == case.target
    np.testing.assert_allclose(problems.to_numpy(P), want, rtol=0,
                               atol=1e-10 * np.abs(want).max())
    generic = projected_gradients(problem, V, backend="torch_func")
    np.testing.assert_allclose(problems.to_numpy(P), problems.to_numpy(generic), rtol=0,
                               atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("k", [3, 40])  # d_in < k (weight route) and d_in > k (direct)
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("form", ["full", "factor"])  # Q_p (tanh) or (J_p, S_p) (ReLU)
def test_kron_moments_with_operator_cache_equal_autodiff(k, loss, form):
    model, x, y = ref.make_model("fc", 17, act="tanh" if form == "full" else "relu")
    problem = make_problem(model, "fc2", x, y, loss, chunk_size=5)
    op = KroneckerHessianOperator(problem, q_form=form)
    assert op.cached
    k = min(k, problem.D - 1)
    rb = RankOneBasis(_basis(problem.D, k), op.layer.d_out, op.layer.d_in,
                      dtype=problem.dtype, device=problem.device)
    calls = []

    class Spy:  # records whether the operator's cache served each batch
        def q_rows(self, idx):
            Q = op.q_rows(idx)
            if form == "full":
                calls.append(Q is not None)
            return Q

        def q_factor_rows(self, idx):
            F = op.q_factor_rows(idx)
            calls.append(F is not None)
            return F

    fast = KronMoments(op.layer, rb, q_source=Spy())
    slow = AutodiffMoments(TargetLayer(problem), rb)
    for s in range(0, problem.N, 4):  # rows that straddle the operator's chunks
        idx = np.arange(s, min(problem.N, s + 4))
        fast.add(idx)
        slow.add(idx)
    assert calls and all(calls)
    h_fast, h_slow = MomentSum(k, full=True, device=problem.device), \
        MomentSum(k, full=True, device=problem.device)
    fast.finish(h_fast)
    slow.finish(h_slow)
    scale = h_slow.value.abs().max().item()
    torch.testing.assert_close(h_fast.value, h_slow.value, rtol=0, atol=1e-10 * scale)
    torch.testing.assert_close(fast.h1_diag, slow.h1_diag, rtol=0,
                               atol=1e-10 * slow.h1_diag.abs().max().item())


def test_q_rows_unsorted_and_missing():
    model, x, y = ref.make_model("fc", 13)
    problem = make_problem(model, "fc2", x, y, "ce", chunk_size=4)
    op = KroneckerHessianOperator(problem)
    tl = op.layer
    idx = np.array([9, 2, 3, 12, 0])
    a, z, xx, yy = tl.index(idx)
    want = tl.q_full(z, xx, yy)
    torch.testing.assert_close(op.q_rows(idx), want, rtol=0, atol=1e-12)
    assert KroneckerHessianOperator(problem, cache_bytes=0).q_rows(idx) is None


def test_block_krylov_per_eigenvalue_rule_against_dense():
    from awch_scale.linalg.krylov import block_krylov_eigh

    A, _ = ref.graded_matrix()
    dense = np.linalg.eigvalsh(A)[::-1]
    At = torch.from_numpy(A)
    tol, k = 1e-4, 40
    rel = {}
    for rule in ("first", "self"):
        out = block_krylov_eigh(lambda V: At @ V, A.shape[0], k, block=8, tol=tol,
                                rel_to=rule, seed=1, max_restarts=500)
        assert out.converged
        V = out.vectors.numpy()
        r = np.linalg.norm(A @ V - V * out.values, axis=0)  # independent residuals
        rel[rule] = r / np.abs(out.values)
        # A Ritz value lies within its residual of an eigenvalue (Krylov-Bogoliubov:
        # min_j |theta_i - lambda_j| <= ||A v_i - theta_i v_i|| for a unit v_i), and Ritz
        # values interlace (theta_i <= lambda_i): so with the top k found, |theta_i -
        # lambda_i| <= ||r_i||, under either rule (observed at most 0.8 ||r_i||); 1e-14
        # |lambda_1| covers the rounding of A, r and eigvalsh.
        err = np.abs(out.values - dense[:k])
        assert np.all(err <= r + 1e-14 * abs(dense[0])), (err / r).max()
        if rule == "self":
            np.testing.assert_allclose(out.values, dense[:k], rtol=1e-6, atol=0)
    assert rel["self"].max() <= 1.01 * tol
    assert rel["first"].max() > tol  # the lambda_1 rule leaves the small ones unresolved


def test_top_eigenpairs_rel_to_self_on_a_network():
    model, x, y = ref.make_model("fc", 30)
    H = ref.dense_hessian(model, "fc2", x, y, "ce")
    dense = np.linalg.eigvalsh(H)[::-1]
    problem = make_problem(model, "fc2", x, y, "ce", chunk_size=8)
    from awch_scale.linalg.eigen import top_eigenpairs

    k = 12
    b = top_eigenpairs(KroneckerHessianOperator(problem), k, method="block", tol=1e-9,
                       rel_to="self", block=4)
    V = b.vectors.numpy()
    r = np.linalg.norm(H @ V - V * b.values, axis=0) / np.abs(b.values)
    assert r.max() <= 2e-9
    np.testing.assert_allclose(b.values, dense[:k], rtol=1e-12, atol=0)
    with pytest.raises(ValueError):
        top_eigenpairs(KroneckerHessianOperator(problem), k, rel_to="other")


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("case", MODES, ids=problems.ids(MODES))
def test_generic_hessian_modes_equal_dense(mode, case, dense, device):
    from awch_scale.model.operators import HessianOperator

    H = dense.H
    problem = make_problem(dense.model, dense.target, dense.x, dense.y, dense.loss,
                           chunk_size=8, device=device)  # 3 chunks, last short
    op = HessianOperator(problem, max_vectors=3, mode=mode)  # 7 vectors: blocks 3, 3, 1
    V = _basis(problem.D, 7, seed=2).to(device)
    want = H @ problems.to_numpy(V)
    scale = np.abs(want).max()
    for _ in range(2):  # a second call must not reuse a stale graph wrongly
        np.testing.assert_allclose(problems.to_numpy(op.matmat(V)), want, rtol=0,
                                   atol=1e-10 * scale)
    np.testing.assert_allclose(problems.to_numpy(op.matmat(V[:, 0])), want[:, 0], rtol=0,
                               atol=1e-10 * scale)
