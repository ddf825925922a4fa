"""Fisher / GGN (SPEC 5) against a dense float64 GGN from explicit per-sample Jacobians."""

from __future__ import annotations

import copy

import dense_reference as ref
import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from awch_scale import analyze_checkpoint
from awch_scale.model.operators import HessianOperator
from awch_scale.model.operators.ggn import GGNOperator, KroneckerGGNOperator, fisher_operator
from awch_scale.model.problem import make_problem

N = 24


def dense_ggn(model, target, x, y, loss) -> np.ndarray:
    """(1/N) sum_i J_i^T Lambda_i J_i, J_i = d logits_i / d w (float64, explicit loop)."""
    m = copy.deepcopy(model).to(torch.float64).eval()
    names = ref.block_parameter_names(m, target)
    params = dict(m.named_parameters())
    shapes = [params[n].shape for n in names]
    w0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def logits(w, xi):
        out, off = {}, 0
        for n, s in zip(names, shapes, strict=True):
            out[n] = w[off:off + s.numel()].view(s)
            off += s.numel()
        return functional_call(m, out, (xi[None],))[0]

    F = np.zeros((w0.numel(), w0.numel()))
    for xi in x.to(torch.float64):
        J = jacrev(logits)(w0, xi).detach().numpy()  # (K, D)
        z = logits(w0, xi).detach().numpy()
        K = z.shape[0]
        p = np.exp(z - z.max())
        p /= p.sum()
        S = np.diag(p) - np.outer(p, p)
        Lam = {"ce": S, "mse": (2.0 / K) * S @ S, "lmse": (2.0 / K) * np.eye(K)}[loss]
        F += J.T @ Lam @ J
    return F / len(x)


CASES = [("fc", "fc2"), ("fc", "out"), ("cnn", "fc1"), ("cnn", "conv")]


@pytest.mark.parametrize("loss", ["ce", "mse", "lmse"])
@pytest.mark.parametrize("kind,target", CASES)
def test_ggn_equals_dense(kind, target, loss):
    model, x, y = ref.make_model(kind, N)
    problem = make_problem(model, ref.as_target(target), x, y, loss, chunk_size=7,
                           dtype=torch.float64)
    want = dense_ggn(model, target, x, y, loss)
    scale = np.abs(want).max()
    got = GGNOperator(problem).to_dense().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * scale)
    if problem.linear_name is not None:
        kron = KroneckerGGNOperator(problem).to_dense().numpy()
        np.testing.assert_allclose(kron, want, rtol=0, atol=1e-10 * scale)
        for form in ("full", "factor", "none"):  # G_i whole, as (J, Lambda), recomputed
            other = KroneckerGGNOperator(problem, q_form=form)
            assert other.cached is (form != "none")
            np.testing.assert_allclose(other.to_dense().numpy(), want, rtol=0,
                                       atol=1e-10 * scale)
        assert isinstance(fisher_operator(problem), KroneckerGGNOperator)


def test_fisher_is_the_hessian_for_lmse_on_the_output_layer():
    """With lmse and the logits linear in the target (the last layer), F = H exactly."""
    model, x, y = ref.make_model("fc", N)
    problem = make_problem(model, "out", x, y, "lmse", dtype=torch.float64)
    H = HessianOperator(problem).to_dense().numpy()
    for F in (GGNOperator(problem), KroneckerGGNOperator(problem)):
        np.testing.assert_allclose(F.to_dense().numpy(), H, rtol=0, atol=1e-10 * np.abs(H).max())


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_fisher_stage_projects_and_solves(loss):
    model, x, y = ref.make_model("fc", 48)
    k = 4
    ds = analyze_checkpoint(model, "fc2", x, y, loss=loss, batch_size=6, k=k, awd=None,
                            stats=None, spectra=None, eigen={"tol": 1e-12},
                            dtype=torch.float64, store_eigvec=True)
    F = dense_ggn(model, "fc2", x, y, loss)
    V = ds.hess_eigvec.values
    np.testing.assert_allclose(ds.fisher.values, V.T @ F @ V, rtol=0,
                               atol=1e-7 * np.abs(F).max())  # V stored in float32
    np.testing.assert_allclose(ds.fisher_eigval.values, np.linalg.eigvalsh(F)[::-1][:k],
                               rtol=0, atol=1e-9 * np.abs(F).max())
    assert "fisher" in list(ds.estimator.values)
