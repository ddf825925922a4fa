"""Fisher / GGN (SPEC 5) against a dense float64 GGN from explicit per-sample Jacobians
(``dense_reference.dense_ggn``), every case on every device."""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import problems
import pytest
import torch

from awch_scale import analyze_checkpoint
from awch_scale.analysis.memory import memory_plan
from awch_scale.model.operators import HessianOperator
from awch_scale.model.operators.ggn import GGNOperator, KroneckerGGNOperator, fisher_operator
from awch_scale.model.problem import make_problem

N = 24
CASES = problems.cases([("fc", "fc2"), ("fc", "out"), ("cnn", "fc1"), ("cnn", "conv")],
                       problems.LOSSES, N)
OUT_LMSE = problems.on_devices([problems.case("fc", "out", "lmse", N)])


def _problem(dense, device):
    return make_problem(dense.model, dense.target, dense.x, dense.y, dense.loss, chunk_size=7,
                        dtype=torch.float64, device=device)


def _close(op, want) -> None:
    """op's dense matrix equals ``want`` to 1e-10 max|want| (float64 round-off)."""
    np.testing.assert_allclose(problems.to_numpy(op.to_dense()), want, rtol=0,
                               atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("case", CASES, ids=problems.ids(CASES))
def test_ggn_equals_dense(case, dense, device):
    problem = _problem(dense, device)
    want = dense.F
    _close(GGNOperator(problem), want)
    if problem.linear_name is not None:
        _close(KroneckerGGNOperator(problem), want)
        for form in ("full", "factor", "none"):  # G_i whole, as (J, Lambda), recomputed
            other = KroneckerGGNOperator(problem, q_form=form)
            assert other.cached is (form != "none")
            _close(other, want)
        assert isinstance(fisher_operator(problem), KroneckerGGNOperator)


@pytest.mark.parametrize("case", OUT_LMSE, ids=problems.ids(OUT_LMSE))
def test_fisher_is_the_hessian_for_lmse_on_the_output_layer(case, dense, device):
    """With lmse and the logits linear in the target (the last layer), F = H exactly."""
    problem = _problem(dense, device)
    H = problems.to_numpy(HessianOperator(problem).to_dense())
    for F in (GGNOperator(problem), KroneckerGGNOperator(problem)):
        _close(F, H)


@pytest.mark.parametrize(("loss", "k", "budget"), [("ce", 4, None), ("mse", 4, None),
                                                   ("ce", 11, 0.004)])
def test_fisher_stage_projects_and_solves(loss, k, budget):
    """With a 0.004 MiB budget the projection runs in column groups of
    ``image_columns`` = 8 < k = 11 (the (D, k) image never whole)."""
    model, x, y = ref.make_model("fc", 48)
    ds = analyze_checkpoint(model, "fc2", x, y, loss=loss, batch_size=6, k=k, awd=None,
                            stats=None, spectra=None, eigen={"tol": 1e-12},
                            dtype=torch.float64, store_eigvec=True, memory_budget_mb=budget)
    if budget is not None:
        problem = make_problem(model, "fc2", x, y, loss, dtype=torch.float64)
        assert memory_plan(problem, budget, k=k).image_columns == 8 < k
    F = ref.dense_ggn(model, "fc2", x, y, loss)
    V = ds.hess_eigvec.values
    np.testing.assert_allclose(ds.fisher.values, V.T @ F @ V, rtol=0,
                               atol=1e-7 * np.abs(F).max())  # V stored in float32
    np.testing.assert_allclose(ds.fisher_eigval.values, np.linalg.eigvalsh(F)[::-1][:k],
                               rtol=0, atol=1e-9 * np.abs(F).max())
    assert "fisher" in list(ds.estimator.values)
