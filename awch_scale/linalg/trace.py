"""Hutchinson estimates from seeded Rademacher probes: the trace of an operator and the
relative Frobenius norm of a commutator (SPEC 6 ``hess_trace``, ``comm_full``).

They need only an operator's ``shape``, ``device`` and ``matmat``
(:class:`~awch_scale.linalg.protocol.Operator`); the probes go through block products,
all at once by default or ``columns`` at a time (bounded memory at large D).

Why not curvlinops' estimators (``hutchinson_trace``, ``hutchinson_squared_fro`` in
curvlinops 3.0.1, installed in the bench extra): they draw their probes from torch's
global RNG (seeding would mean mutating global state) and return only the mean (no
per-probe values, hence no standard error, which SPEC 6 stores). The estimates below
are checked against dense matrices in tests/test_spectra.py and against PyHessian in
tests/test_pyhessian_crosscheck.py.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from awch_scale.linalg.protocol import Operator


def rademacher(D: int, n: int, seed: int, device=None, rows: int = 1 << 16) -> Tensor:  # noqa: N803
    """n Rademacher probe vectors (entries +-1), shape (D, n), float64, from ``seed``.

    Drawn ``rows`` rows at a time into the (D, n) result (the same values as one
    ``integers(0, 2, size=(D, n))`` draw, which consumes the stream row by row; checked in
    tests/test_spectra.py): the int64 draw and its float copy are (rows, n), not (D, n)."""
    rng = np.random.default_rng(seed)
    out = torch.empty(D, n, dtype=torch.float64, device=device)
    for r in range(0, D, rows):
        z = rng.integers(0, 2, size=(min(rows, D - r), n)) * 2.0 - 1.0
        out[r:r + rows] = torch.from_numpy(z)
    return out


def _groups(Z: Tensor, columns: int | None):
    """Column blocks of Z, ``columns`` at a time (all at once when None)."""
    n = Z.shape[1]
    step = max(1, columns or n)
    for j in range(0, n, step):
        yield Z[:, j:j + step].contiguous() if step < n else Z


def hutchinson_trace(op: Operator, probes: int, seed: int,
                     columns: int | None = None) -> tuple[float, float]:
    """Hutchinson estimate of tr(A) and its standard error.

    tr(A) ~ (1/n) sum_j z_j^T A z_j over n seeded Rademacher probes (block products of
    ``columns`` probes, all n by default); SE = std_j(z_j^T A z_j) / sqrt(n) (sample std,
    ddof = 1).
    """
    Z = rademacher(op.shape[0], probes, seed, op.device)
    q = torch.cat([(Zj * op.matmat(Zj)).sum(0) for Zj in _groups(Z, columns)]).cpu().numpy()
    return float(q.mean()), float(q.std(ddof=1) / np.sqrt(probes)) if probes > 1 else np.nan


def commutation(hess: Operator, cov: Operator, probes: int, seed: int,
                columns: int | None = None) -> tuple[float, float]:
    """comm_full = ||HC - CH||_F / (||H||_F ||C||_F) by Hutchinson, and its delta-method SE.

    With n seeded Rademacher probes z_j: a_j = ||(HC - CH) z_j||^2, b_j = ||H z_j||^2,
    c_j = ||C z_j||^2 (each unbiased for its squared Frobenius norm). The estimate is
    R = sqrt(a / (b c)) with the probe means a, b, c; by the delta method
    Var(log R) = (1/4) grad^T S grad / n with grad = (1/a, -1/b, -1/c) and S the sample
    covariance of (a_j, b_j, c_j), so SE(R) = R sqrt(Var(log R)). Cost: 2n products
    with each operator, ``columns`` probes per block product (all n by default); four
    (D, columns) float64 images are held at once (H Z, C Z, H C Z and C H Z).
    """
    Z = rademacher(hess.shape[0], probes, seed, hess.device)
    rows = []
    for Zj in _groups(Z, columns):
        HZ, CZ = hess.matmat(Zj), cov.matmat(Zj)
        comm = hess.matmat(CZ)
        comm.sub_(cov.matmat(HZ))
        rows.append(torch.stack([comm.pow(2).sum(0), HZ.pow(2).sum(0), CZ.pow(2).sum(0)]))
        del HZ, CZ, comm
    x = torch.cat(rows, 1).cpu().numpy()
    a, b, c = x.mean(1)
    R = float(np.sqrt(a / (b * c)))
    if probes < 2:
        return R, np.nan
    grad = np.array([1 / a, -1 / b, -1 / c])
    var_log = 0.25 * grad @ np.cov(x) @ grad / probes
    return R, float(R * np.sqrt(max(var_log, 0.0)))
