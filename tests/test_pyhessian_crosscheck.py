"""Cross-check with PyHessian (Yao et al. 2020), the tool the paper's field uses.

The same block (fc2 of the tiny MLP, CNN fc1; other parameters frozen by
``requires_grad=False``, which is how PyHessian selects a block) and the same loss:

- top eigenvalues: PyHessian's ``eigenvalues(top_n=3)`` (power iteration with
  deflation, run to tol 1e-10) against ours (``top_eigenpairs``, tol 1e-10) and the
  dense ``eigh``: ours within 1e-6 |lambda_1| (observed ~1e-13); PyHessian's within
  1e-5 |lambda_1|: its ``normalization`` divides by ||v|| + 1e-6, so its Rayleigh
  quotients v^T H v are biased low by a factor (1 + 1e-6)^-2 ~ 1 - 2e-6 (observed
  relative errors 2.000e-6 on every eigenvalue of every case);
- trace: PyHessian's ``trace()`` (Hutchinson with Rademacher probes from torch's
  global RNG, seeded inside ``fork_rng``) against ours (``hess_trace``) and the dense
  trace: each within 3 of its standard errors of the dense value, and the two within
  3 standard errors of their difference.

PyHessian's ``density()`` is not used: it is broken on current torch.
"""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import pytest
import torch

pyhessian = pytest.importorskip("pyhessian")

from awch_scale.linalg.eigen import top_eigenpairs  # noqa: E402
from awch_scale.linalg.trace import hutchinson_trace  # noqa: E402
from awch_scale.model.losses import get_loss  # noqa: E402
from awch_scale.model.operators import HessianOperator  # noqa: E402
from awch_scale.model.problem import make_problem  # noqa: E402

CASES = [("fc", "fc2", "ce"), ("fc", "fc2", "mse"), ("cnn", "fc1", "ce")]
IDS = ["-".join(c) for c in CASES]


def pyhessian_of(model, target, x, y, loss):
    model = ref._float64_eval(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name == f"{target}.weight")
    per_sample = get_loss(loss)

    def criterion(z, labels):
        return per_sample(z, labels).mean()

    return pyhessian.hessian(model, criterion, data=(x, y), cuda=False)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_against_pyhessian(case):
    kind, target, loss = case
    model, x, y = ref.make_model(kind, 40)
    H = ref.dense_hessian(model, target, x, y, loss)
    dense = np.linalg.eigvalsh(H)[::-1]
    problem = make_problem(model, target, x, y, loss, chunk_size=16)
    op = HessianOperator(problem)
    ours = top_eigenpairs(op, 3, method="eigsh", tol=1e-10).values
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.set_default_dtype(torch.float64)  # PyHessian draws probes in the default dtype
        try:
            ph = pyhessian_of(model, target, x, y, loss)
            theirs = np.array(ph.eigenvalues(maxIter=5000, tol=1e-10, top_n=3)[0])
            traces = np.array(ph.trace(maxIter=200, tol=1e-12))
        finally:
            torch.set_default_dtype(torch.float32)
    scale = abs(dense[0])
    assert np.abs(ours - dense[:3]).max() <= 1e-6 * scale
    assert np.abs(theirs - dense[:3]).max() <= 1e-5 * scale
    assert np.abs(theirs - ours).max() <= 1e-5 * scale

    tr = np.trace(H)
    ph_tr, ph_se = traces.mean(), traces.std(ddof=1) / np.sqrt(len(traces))
    our_tr, our_se = hutchinson_trace(op, 200, seed=0)
    assert abs(ph_tr - tr) <= 3 * ph_se
    assert abs(our_tr - tr) <= 3 * our_se
    assert abs(ph_tr - our_tr) <= 3 * np.hypot(ph_se, our_se)
