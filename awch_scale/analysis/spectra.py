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
- ``hess_trace`` (Hutchinson, seeded Rademacher probes, SE = sample std / sqrt(n)).
- ``comm_full`` = ||HC - CH||_F / (||H||_F ||C||_F), each squared norm by Hutchinson
  (||A||_F^2 = E_z ||A z||^2 for Rademacher z), the SE by the delta method.
- ``density``: stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Papyan 2020,
  Alg. 2) with Gaussian broadening on a grid.

Why not curvlinops' estimators (``hutchinson_trace``, ``hutchinson_squared_fro``,
``lanczos_approximate_spectrum`` in curvlinops 3.0.1, installed in the bench extra):
they draw their probes from torch's global RNG (seeding would mean mutating global
state), return only the mean (no per-probe values, hence no standard error, which
SPEC 6 stores), and their Lanczos (``fast_lanczos``) runs one probe per product with
no reorthogonalisation and no breakdown handling (a block with D <= steps, as in every
dense test, gives NaN weights). The few lines below run all probes as one block (one
sweep over the data per Lanczos step for all probes), reorthogonalise fully, stop a
probe at breakdown, and are checked against dense eigendecompositions in
tests/test_spectra.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from awch_scale.linalg.eigen import top_eigenpairs
from awch_scale.model.operators import CovarianceOperator, IdentityOperator, SecondMomentOperator
from awch_scale.model.operators.algebra import OperatorAlgebra
from awch_scale.model.problem import BlockProblem


def rademacher(D: int, n: int, seed: int, device=None) -> Tensor:  # noqa: N803
    """n Rademacher probe vectors (entries +-1), shape (D, n), float64, from ``seed``."""
    z = np.random.default_rng(seed).integers(0, 2, size=(D, n)) * 2.0 - 1.0
    return torch.from_numpy(z).to(device=device)


def principal_cosines(V: Tensor, U: Tensor) -> np.ndarray:
    """Cosines of the principal angles between span(V) and span(U) (orthonormal columns).

    The singular values of V^T U, descending, clipped to [0, 1] (round-off may push the
    largest a few ulps above 1).
    """
    s = torch.linalg.svdvals(V.to(torch.float64).T @ U.to(torch.float64))
    return np.clip(s.cpu().numpy(), 0.0, 1.0)


def hutchinson_trace(op: OperatorAlgebra, probes: int, seed: int) -> tuple[float, float]:
    """Hutchinson estimate of tr(A) and its standard error.

    tr(A) ~ (1/n) sum_j z_j^T A z_j over n seeded Rademacher probes (one block product);
    SE = std_j(z_j^T A z_j) / sqrt(n) (sample std, ddof = 1).
    """
    Z = rademacher(op.shape[0], probes, seed, op.device)
    q = (Z * op.matmat(Z)).sum(0).cpu().numpy()
    return float(q.mean()), float(q.std(ddof=1) / np.sqrt(probes)) if probes > 1 else np.nan


def commutation(hess: OperatorAlgebra, cov: OperatorAlgebra, probes: int,
                seed: int) -> tuple[float, float]:
    """comm_full = ||HC - CH||_F / (||H||_F ||C||_F) by Hutchinson, and its delta-method SE.

    With n seeded Rademacher probes z_j: a_j = ||(HC - CH) z_j||^2, b_j = ||H z_j||^2,
    c_j = ||C z_j||^2 (each unbiased for its squared Frobenius norm). The estimate is
    R = sqrt(a / (b c)) with the probe means a, b, c; by the delta method
    Var(log R) = (1/4) grad^T S grad / n with grad = (1/a, -1/b, -1/c) and S the sample
    covariance of (a_j, b_j, c_j), so SE(R) = R sqrt(Var(log R)). Cost: 2n products
    with each operator.
    """
    Z = rademacher(hess.shape[0], probes, seed, hess.device)
    HZ, CZ = hess.matmat(Z), cov.matmat(Z)
    comm = hess.matmat(CZ) - cov.matmat(HZ)
    x = torch.stack([comm.pow(2).sum(0), HZ.pow(2).sum(0), CZ.pow(2).sum(0)]).cpu().numpy()
    a, b, c = x.mean(1)
    R = float(np.sqrt(a / (b * c)))
    if probes < 2:
        return R, np.nan
    grad = np.array([1 / a, -1 / b, -1 / c])
    var_log = 0.25 * grad @ np.cov(x) @ grad / probes
    return R, float(R * np.sqrt(max(var_log, 0.0)))


@dataclass
class LanczosQuadrature:
    """Gauss quadrature nodes and weights of n probes (lists, one entry per probe).

    For probe q = z / ||z||, the Lanczos tridiagonal T_m = S Theta S^T gives nodes
    theta_l and weights tau_l = S_{1l}^2 (sum_l tau_l = 1), with
    q^T f(A) q ~ sum_l tau_l f(theta_l), exact for polynomials of degree < 2m.
    """

    nodes: list[np.ndarray]
    weights: list[np.ndarray]


def lanczos_quadrature(op: OperatorAlgebra, probes: int, steps: int, seed: int, *,
                       reorthogonalize: bool = True) -> LanczosQuadrature:
    """Run ``steps`` Lanczos steps from each of ``probes`` seeded Rademacher vectors.

    All probes advance together (one block product per step). With ``reorthogonalize``
    each new vector is orthogonalised twice against all of its probe's previous ones
    (memory probes * steps * D float64); a probe whose new beta falls below
    1e-12 times the largest |alpha|, |beta| seen has found an invariant subspace and
    stops there (its quadrature is then exact).
    """
    D = op.shape[0]
    steps = min(steps, D)
    Q = rademacher(D, probes, seed, op.device)
    Q = Q / torch.linalg.vector_norm(Q, dim=0)
    basis = [Q] if reorthogonalize else None
    alpha = np.zeros((steps, probes))
    beta = np.zeros((steps, probes))
    length = np.full(probes, steps)
    active = np.ones(probes, dtype=bool)
    prev = torch.zeros_like(Q)
    scale = np.zeros(probes)
    for m in range(steps):
        W = op.matmat(Q)
        a = (W * Q).sum(0)
        W = W - Q * a - prev * torch.as_tensor(beta[m - 1] if m else np.zeros(probes),
                                                device=W.device)
        if reorthogonalize:
            B = torch.stack(basis)  # (m+1, D, n)
            for _ in range(2):
                W = W - torch.einsum("jdn,jn->dn", B, torch.einsum("jdn,dn->jn", B, W))
        alpha[m] = a.cpu().numpy()
        b = torch.linalg.vector_norm(W, dim=0).cpu().numpy()
        scale = np.maximum(scale, np.maximum(np.abs(alpha[m]), b))
        if m == steps - 1:
            break
        stop = active & (b <= 1e-12 * np.maximum(scale, 1e-300))
        length[stop] = m + 1
        active &= ~stop
        b = np.where(active, b, 1.0)
        beta[m] = np.where(active, b, 0.0)
        prev = Q
        Q = W / torch.as_tensor(b, device=W.device) * torch.as_tensor(active, device=W.device)
        if reorthogonalize:
            basis.append(Q)
        if not active.any():
            break
    nodes, weights = [], []
    for j in range(probes):
        n = length[j]
        T = np.diag(alpha[:n, j]) + np.diag(beta[:n - 1, j], 1) + np.diag(beta[:n - 1, j], -1)
        th, S = np.linalg.eigh(T)
        nodes.append(th)
        weights.append(S[0] ** 2)
    return LanczosQuadrature(nodes, weights)


def broadened_density(quad: LanczosQuadrature, grid_size: int, width: float,
                      upper: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SLQ spectral density phi(t) = mean_j sum_l tau_jl G_l(t) on a uniform grid.

    The grid spans [min node, max(max node, ``upper``)]: by Cauchy interlacing every
    Ritz value lies inside the spectrum, so no mass is put outside it. G_l is a
    Gaussian centred at theta_l with standard deviation sigma = width * (grid span),
    truncated to the grid and normalised there (trapezoid rule), so the density
    integrates to exactly 1 on the grid (``np.trapezoid(density, grid) = 1``) and each
    node keeps its weight. Truncation moves the mean of a node within ~0.8 sigma of an
    end of the grid inwards; keep ``width`` small (default 1e-2 in
    :func:`spectra_variables`).
    """
    th = np.concatenate(quad.nodes)
    tau = np.concatenate(quad.weights) / len(quad.nodes)
    lo, hi = float(th.min()), float(th.max())
    if upper is not None:
        hi = max(hi, float(upper))
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-6
    grid = np.linspace(lo, hi, grid_size)
    sigma = width * (hi - lo)
    G = np.exp(-0.5 * ((grid[None, :] - th[:, None]) / sigma) ** 2)
    G /= np.trapezoid(G, grid, axis=1)[:, None]
    return grid, tau @ G


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


def _stage_top(op, what: str, r: int, **kwargs):
    """``top_eigenpairs(op, r, ...)``; a ConvergenceError names the spectra stage."""
    from awch_scale.errors import ConvergenceError

    try:
        return top_eigenpairs(op, r, **kwargs)
    except ConvergenceError as exc:
        raise ConvergenceError(f"spectra stage (analysis.spectra; k below is its r = {r}): "
                               f"top eigenpairs of {what}: {exc}") from None


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
) -> tuple[dict[str, tuple], dict[str, np.ndarray]]:
    """All SPEC 6 "second moment versus Hessian" and "beyond the top k" variables.

    Args:
        problem: the block problem.
        hess_op: the Hessian operator H (``analysis.hessian_operator``).
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

    Returns:
        (data, coords): data maps each registry name to (dims, value); coords has
        ``rank`` and ``angle`` (1..r) and ``grid`` (the density's abscissae).
    """
    k = V_hess.shape[1]
    if not 0 < r <= k:
        raise ValueError(f"spectra r = {r} must be in 1..k = {k}")
    start = time.perf_counter()
    M = second_moment or SecondMomentOperator(problem, world=world)
    C = CovarianceOperator(M, batch_size)
    m = _stage_top(M, "M", r, method=method, tol=tol, seed=seed)
    c = _stage_top(C, "C", r, method=method, tol=tol, seed=seed)
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
    hp_bottom = _stage_top(hess_op - M, "H - M", r, method=method, tol=tol, seed=seed)
    Vr = V_hess[:, :r]
    trace, trace_se = hutchinson_trace(hess_op, probes, seed)
    comm, comm_se = commutation(hess_op, C, probes, seed + 1)
    reorth = probes * min(steps, problem.D) * problem.D * 8 <= reorth_bytes
    quad = lanczos_quadrature(hess_op, probes, steps, seed, reorthogonalize=reorth)
    grid, density = broadened_density(quad, grid_size, width, upper=float(eigvals[0]))
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
