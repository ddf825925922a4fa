"""Second moment versus Hessian, and the Hessian beyond its top k (SPEC 6).

Everything here is matrix-free: the operators of :mod:`awch_scale.model.operators` (the
Hessian H, the gradient second moment M, the covariance C = (1/B)(M - g g^T) and the
composition H_p = M - H) are only multiplied with blocks of vectors.

- ``m_eigval``, ``c_eigval``: top-r eigenvalues of M and C; ``hp_eigval_top`` /
  ``hp_eigval_bottom``: the r algebraically largest / smallest eigenvalues of
  H_p = M - H (the smallest are minus the largest of H - M), by
  :func:`awch_scale.linalg.eigen.top_eigenpairs`.
- ``principal_cos`` / ``hc_principal_cos``: cosines of the principal angles between the
  top-r eigenspaces of H (V_r) and of M (U_r) or C, the singular values of V_r^T U_r
  (descending).
- ``hess_trace`` (Hutchinson, seeded Rademacher probes, SE = sample std / sqrt(n)) and
  ``comm_full`` = ||HC - CH||_F / (||H||_F ||C||_F), each squared norm by Hutchinson,
  the SE by the delta method: :mod:`awch_scale.linalg.trace`.
- ``density``: stochastic Lanczos quadrature with Gaussian broadening on a grid:
  :mod:`awch_scale.linalg.density`.

The stochastic estimators need only an operator, so they live in the linalg layer (with
why they are not curvlinops'); this module runs them, and the eigensolvers, on H, M, C
and H_p for the spectra stage.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from awch_scale.linalg.density import broadened_density, lanczos_quadrature
from awch_scale.linalg.eigen import top_eigenpairs
from awch_scale.linalg.trace import commutation, hutchinson_trace
from awch_scale.model.operators import CovarianceOperator, IdentityOperator, SecondMomentOperator
from awch_scale.model.operators.algebra import OperatorAlgebra
from awch_scale.model.problem import BlockProblem


def principal_cosines(V: Tensor, U: Tensor) -> np.ndarray:
    """Cosines of the principal angles between span(V) and span(U) (orthonormal columns).

    The singular values of V^T U, descending, clipped to [0, 1] (round-off may push the
    largest a few ulps above 1).
    """
    s = torch.linalg.svdvals(V.to(torch.float64).T @ U.to(torch.float64))
    return np.clip(s.cpu().numpy(), 0.0, 1.0)


def _top_values_with_fallback(op, r, *, method, tol, seed) -> np.ndarray:
    """Top-r eigenvalues; on a ConvergenceError of the block solver retry with ARPACK,
    and if that fails too, warn and return NaNs (the other spectra stay usable).

    Why: the top of H_p can be a cluster of multiplicity > r at 0 (the common null space
    of M and H of a trained ReLU network: on digits_fc_ce, D = 1024, the 50 largest
    eigenvalues of M - H are all within 1e-16 of 0). A Krylov solver sees one direction
    of such an eigenspace per start vector, so the block solver's residuals stagnate
    (2.5e-4 after 100 restarts), while ARPACK's restarted Lanczos meets its tolerance.
    """
    import warnings

    from awch_scale.errors import ConvergenceError

    try:
        return top_eigenpairs(op, r, method=method, tol=tol, seed=seed).values
    except ConvergenceError as first:
        if method == "eigsh":
            err = first
        else:
            try:
                return top_eigenpairs(op, r, method="eigsh", tol=tol, seed=seed).values
            except ConvergenceError as second:
                err = second
    warnings.warn(f"hp_eigval_top left NaN: {err}", RuntimeWarning, stacklevel=3)
    return np.full(r, np.nan)


def spectra_variables(
    problem: BlockProblem,
    hess_op: OperatorAlgebra,
    V_hess: Tensor,  # noqa: N803
    eigvals: np.ndarray,
    *,
    r: int,
    batch_size: int,
    probes: int = 20,
    steps: int = 80,
    grid_size: int = 500,
    width: float = 1e-2,
    seed: int = 0,
    tol: float = 1e-6,
    method: str = "auto",
    hp_tol: float = 1e-4,
    hp_method: str = "eigsh",
    reorth_bytes: int = 1 << 30,
    second_moment: SecondMomentOperator | None = None,
    world=None,
    provenance: dict | None = None,
) -> tuple[dict[str, tuple], dict[str, np.ndarray]]:
    """All SPEC 6 "second moment versus Hessian" and "beyond the top k" variables.

    Args:
        problem: the block problem.
        hess_op: the Hessian operator H (:func:`awch_scale.analysis.context.hessian_operator`).
        V_hess: the Hessian's top-k eigenvectors (D, k), columns by descending eigenvalue.
        eigvals: their eigenvalues (k,), descending.
        r: eigenpairs of M, C and H_p, and principal angles (r <= k, r < D).
        batch_size: B of the covariance C = (1/B)(M - g g^T).
        probes: Rademacher probes for SLQ, the trace and comm_full.
        steps: Lanczos steps per SLQ probe.
        grid_size: points of the density grid.
        width: Gaussian broadening, as a fraction of the grid's span.
        seed: seeds every probe set and eigensolver start.
        tol: eigensolver tolerance (``top_eigenpairs``).
        method: eigensolver (``top_eigenpairs``).
        hp_tol: eigensolver tolerance for the top of H_p, relative to lambda_1(H) (see
            the shift below): those eigenvalues sit in H's bulk, where 1e-6 takes the
            block solver more than 100 restarts (trained digits MLP, D = 1024, r = 50:
            residual 2.5e-4 after 100 restarts).
        hp_method: eigensolver for the top of H_p. ARPACK by default: on the shifted
            operator the block solver stalls at ~2e-4 (digits D = 1024 and the paper
            shape D = 2500, N = 20,000, r = 50), ARPACK converges (paper shape: 727
            products, 62 s on one CPU thread; unshifted it took 132 s).
        reorth_bytes: SLQ reorthogonalises fully while its basis (probes * steps * D
            float64 values) fits in this many bytes; beyond, it runs the plain three-term
            recurrence (Papyan 2020's choice; ghost copies of converged Ritz values then
            share their weight, the quadrature stays usable for the density).
        second_moment: a prebuilt M operator (default: built here, ``structure="auto"``).
        world: a :class:`~awch_scale.world.World` sharing the products of M (and
            C) over ranks; ``hess_op`` should share its own (built with the same
            world). Every rank gets the same numbers; the eigensolvers, probes and
            quadratures run identically on every rank.
        provenance: a dict the stage's provenance goes into: ``spectra_seconds``, the wall
            time of each sub-stage (operators, M, C, H_p top and bottom, trace, comm_full,
            density), so that a user sees where the stage's time goes.

    Returns:
        (data, coords): data maps each registry name to (dims, value); coords has
        ``rank`` and ``angle`` (1..r) and ``grid`` (the density's abscissae).
    """
    k = V_hess.shape[1]
    if not 0 < r <= k:
        raise ValueError(f"spectra r = {r} must be in 1..k = {k}")
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        seconds[name] = round(now - clock[0], 4)
        clock[0] = now

    M = second_moment or SecondMomentOperator(problem, world=world)
    C = CovarianceOperator(M, batch_size)
    lap("operators")
    m = top_eigenpairs(M, r, method=method, tol=tol, seed=seed)
    lap("m")
    c = top_eigenpairs(C, r, method=method, tol=tol, seed=seed)
    lap("c")
    # The top of H_p = M - H lies in H's bulk (near 0, where H's eigenvalues cluster),
    # and the solvers' tolerance is relative to the eigenvalue: unshifted, ARPACK and the
    # block solver stall there (seen: a trained digits net, D = 1024, no convergence in
    # minutes). Shifted by sigma = lambda_1(H) >= ||H||-ish, M - H + sigma I >= M >= 0,
    # so the same tol means an absolute accuracy of tol * lambda_1(H), the scale of
    # hess_residual. The bottom of H_p is minus the top of H - M, near lambda_1(H).
    sigma = abs(float(eigvals[0]))
    shifted = M - hess_op + sigma * IdentityOperator(problem)
    hp_top_values = _top_values_with_fallback(shifted, r, method=hp_method, tol=hp_tol,
                                              seed=seed) - sigma
    lap("hp_top")
    hp_bottom = top_eigenpairs(hess_op - M, r, method=method, tol=tol, seed=seed)
    lap("hp_bottom")
    Vr = V_hess[:, :r]
    trace, trace_se = hutchinson_trace(hess_op, probes, seed)
    lap("trace")
    comm, comm_se = commutation(hess_op, C, probes, seed + 1)
    lap("comm_full")
    reorth = probes * min(steps, problem.D) * problem.D * 8 <= reorth_bytes
    quad = lanczos_quadrature(hess_op, probes, steps, seed, reorthogonalize=reorth)
    grid, density = broadened_density(quad, grid_size, width, upper=float(eigvals[0]))
    lap("density")
    if provenance is not None:
        provenance["spectra_seconds"] = seconds
    ranks = np.arange(1, r + 1)
    data = {
        "m_eigval": ("rank", m.values),
        "hp_eigval_top": ("rank", hp_top_values),
        "hp_eigval_bottom": ("rank", -hp_bottom.values),
        "principal_cos": ("angle", principal_cosines(Vr, m.vectors)),
        "c_eigval": ("rank", c.values),
        "hc_principal_cos": ("angle", principal_cosines(Vr, c.vectors)),
        "comm_full": ((), comm),
        "comm_full_se": ((), comm_se),
        "density": ("grid", density),
        "hess_trace": ((), trace),
        "hess_trace_se": ((), trace_se),
        "seconds_spectra": ((), time.perf_counter() - start),
    }
    return data, {"rank": ranks, "angle": ranks, "grid": grid}
