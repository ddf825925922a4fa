"""Second moment versus Hessian, and the Hessian beyond its top k (SPEC 6).

Everything here is matrix-free at large D: the operators of
:mod:`awch_scale.model.operators` (the Hessian H, the gradient second moment M, the
covariance C = (1/B)(M - g g^T) and H_p = M - H) are only multiplied with blocks of
vectors, on their device. For a Linear target M and H_p share the Kronecker Hessian's
per-sample cache (:class:`~awch_scale.model.operators.kronecker.KroneckerCombination`:
H_p costs one sweep, not two) and its TargetLayer.

- ``m_eigval``, ``c_eigval``: top-r eigenvalues of M and C; ``hp_eigval_top`` /
  ``hp_eigval_bottom``: the r algebraically largest / smallest eigenvalues of
  H_p = M - H; each within ``tol`` times its operator's scale or NaN with the reason in
  provenance (:mod:`awch_scale.analysis.spectra_solvers`: dense, sample-space Gram or
  Krylov route, chosen by D, N and r).
- ``principal_cos`` / ``hc_principal_cos``: cosines of the principal angles between the
  top-r eigenspaces of H (V_r) and of M (U_r) or C, the singular values of V_r^T U_r
  (descending).
- ``hess_trace`` (Hutchinson, seeded Rademacher probes, SE = sample std / sqrt(n)) and
  ``comm_full`` = ||HC - CH||_F / (||H||_F ||C||_F), each squared norm by Hutchinson,
  the SE by the delta method: :mod:`awch_scale.linalg.trace` (probes in block products,
  all at once while their images fit the memory plan: ``probe_columns``).
- ``density``, ``density_m``, ``density_hp``: the spectral densities of H, M and H_p on
  one grid, by stochastic Lanczos quadrature with Gaussian broadening
  (:mod:`awch_scale.linalg.density`, all probes in one block), M's from its exact
  spectrum when the dense or Gram route has it; each density's Gaussians are confined
  to its own operator's spectrum, so it integrates to 1 on the grid.

The stochastic estimators need only an operator, so they live in the linalg layer (with
why they are not curvlinops'); this module runs them, and the eigensolvers, on H, M, C
and H_p for the spectra stage.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

from awch_scale.analysis.hp_bounds import certify_top, hp_top_bounds
from awch_scale.analysis.spectra_krylov import krylov_both, krylov_top
from awch_scale.analysis.spectra_solvers import (
    DENSE_MAX,
    DenseOperator,
    Restricted,
    TopSpectrum,
    choose_route,
    dense_matrix,
    dense_top,
    eigsh_top,
    gram_top,
    live_coordinates,
    with_zeros,
)
from awch_scale.linalg.density import (
    density_on_grid,
    exact_quadrature,
    lanczos_quadrature,
    quadrature_range,
    spectral_grid,
)
from awch_scale.linalg.trace import commutation, hutchinson_trace
from awch_scale.model.operators import (
    KroneckerHessianOperator,
    LinearCombination,
    LowRankOperator,
    SecondMomentOperator,
)
from awch_scale.model.operators.algebra import DENSE_LIMIT
from awch_scale.model.operators.kronecker import KroneckerCombination
from awch_scale.model.problem import BlockProblem

PARTS = ("m", "c", "hp_top", "hp_bottom", "trace", "comm_full", "density", "density_m",
         "density_hp")
"""Sub-parts of the stage a recipe can switch off (``analysis.spectra.<part>: false``):
``m`` (m_eigval, principal_cos), ``c`` (c_eigval, hc_principal_cos), ``hp_top``,
``hp_bottom``, ``trace`` (hess_trace and its SE), ``comm_full`` (and its SE), ``density``
(of H, with density_grid), ``density_m``, ``density_hp``."""


SLQ_PROBE_DIRECTIONS = 10_000
"""Default SLQ probes: probes * min(1, SLQ_PROBE_DIRECTIONS / D), rounded up
(:func:`density_probes_for`)."""


def density_probes_for(probes: int, D: int) -> int:
    """The default probes of each SLQ density: ``probes`` * min(1, 1e4 / D), rounded up.

    A probe's quadrature averages over D directions (its weights are the squared
    components of a random unit vector), so the density's variance falls like
    1 / (probes D): at D = 1e6 one probe does what 100 do at D = 1e4, and a probe of H_p
    costs 40 products there (0.16 s each on one CPU thread)."""
    return max(1, math.ceil(probes * min(1.0, SLQ_PROBE_DIRECTIONS / D)))


def principal_cosines(V: Tensor, U: Tensor) -> np.ndarray:
    """Cosines of the principal angles between span(V) and span(U) (orthonormal columns).

    The singular values of V^T U, descending, clipped to [0, 1] (round-off may push the
    largest a few ulps above 1).
    """
    return overlap_cosines(V.to(torch.float64).T @ U.to(torch.float64))


def overlap_cosines(overlap: Tensor) -> np.ndarray:
    """The singular values of an overlap V^T U, descending, clipped to [0, 1]."""
    s = torch.linalg.svdvals(overlap.to(torch.float64))
    return np.clip(s.cpu().numpy(), 0.0, 1.0)


class _Clock:
    """Wall time and operator products of each sub-stage, in order (provenance
    ``spectra_seconds``, ``spectra_products``): products are counted on the operators
    ``leaves`` (each product of the stage is counted once, by the operator that ran it)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.products: dict[str, int] = {}
        self.leaves: list = []
        self.t, self.n = time.perf_counter(), 0

    def watch(self, leaves) -> None:
        """Count the products of ``leaves`` from now on."""
        self.leaves = list({id(op): op for op in leaves}.values())
        self.n = self._count()

    def _count(self) -> int:
        return sum(op.n_products for op in self.leaves)

    def lap(self, name: str) -> None:
        now, n = time.perf_counter(), self._count()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.t, 4)
        if n > self.n:
            self.products[name] = self.products.get(name, 0) + n - self.n
        self.t, self.n = now, n


def _operators(problem, hess_op, batch_size, second_moment, world):
    """(M, M for products, H_p = M - H, H - M, C for products, mean gradient g): the
    Kronecker combinations of the Hessian's cache for a Linear target, else sums."""
    layer = getattr(hess_op, "layer", None)
    M = second_moment or SecondMomentOperator(problem, world=world, layer=layer)
    if isinstance(hess_op, KroneckerHessianOperator) and M.structure == "linear":
        Mx = KroneckerCombination(hess_op, M.deltas, 1.0, 0.0)
        Hp = KroneckerCombination(hess_op, M.deltas, 1.0, -1.0)
        Hm = KroneckerCombination(hess_op, M.deltas, -1.0, 1.0)
    else:
        Mx, Hp, Hm = M, M - hess_op, hess_op - M
    g = M.mean_gradient()
    b = float(batch_size)
    C = LinearCombination([(1.0 / b, Mx), (-1.0 / b, LowRankOperator(problem, g))])
    return M, Mx, Hp, Hm, C, g


def spectra_variables(
    problem: BlockProblem,
    hess_op,
    V_hess: Tensor,  # noqa: N803
    eigvals: np.ndarray,
    *,
    r: int,
    batch_size: int,
    probes: int = 10,
    steps: int = 30,
    grid_size: int = 200,
    width: float = 1e-2,
    seed: int = 0,
    tol: float = 1e-6,
    method: str = "auto",
    parts=PARTS,
    density_probes: int | None = None,
    dense_max: int = DENSE_MAX,
    maxiter: int = 50,
    projections: Tensor | None = None,
    reorth_bytes: int = 1 << 30,
    probe_columns: int | None = None,
    second_moment: SecondMomentOperator | None = None,
    world=None,
    provenance: dict | None = None,
) -> tuple[dict[str, tuple], dict[str, np.ndarray]]:
    """The SPEC 6 "second moment versus Hessian" and "beyond the top k" variables.

    Args:
        problem: the block problem.
        hess_op: the Hessian operator H (:func:`awch_scale.analysis.context.hessian_operator`).
        V_hess: the Hessian's top-k eigenvectors (D, k), columns by descending eigenvalue.
        eigvals: their eigenvalues (k,), descending; |eigvals[0]| is H_p's scale.
        r: eigenpairs of M, C and H_p, and principal angles (r <= k, r < D).
        batch_size: B of the covariance C = (1/B)(M - g g^T).
        probes: Rademacher probes of the trace and comm_full estimates.
        steps: Lanczos steps per SLQ probe.
        grid_size: points of the density grid.
        width: Gaussian broadening, as a fraction of the grid's span.
        seed: seeds every probe set and eigensolver start.
        tol: accuracy of every eigenvalue, in units of its operator's scale (|lambda_1|
            of H for H_p, of M and C for theirs); a value not brought within it is NaN.
        method: ``auto`` (:func:`~awch_scale.analysis.spectra_solvers.choose_route`),
            ``dense``, ``krylov`` or ``eigsh`` (ARPACK: the tests' reference).
        parts: the sub-parts to compute (:data:`PARTS`); the others' variables are absent.
        density_probes: probes of each SLQ density (default :func:`density_probes_for`).
        dense_max: largest D of the dense route under ``auto``.
        maxiter: restarts allowed to each Krylov solve.
        projections: G V (N, >= r), the per-sample gradients projected on V_hess (the
            covariance stage's), for the Gram route's cosines; computed when None.
        reorth_bytes: SLQ reorthogonalises fully while its basis (probes * steps * D
            float64 values) fits in this many bytes; beyond, it runs the plain three-term
            recurrence (Papyan 2020's choice; ghost copies of converged Ritz values then
            share their weight, the quadrature stays usable for the density).
        probe_columns: probes per block product of the trace and comm_full estimates
            (default all ``probes``): comm_full holds four (D, probe_columns) float64
            images at once (at D = 1e8 and 10 probes, 32 GB all at once).
        second_moment: a prebuilt M operator (default: built here, sharing the
            Hessian's TargetLayer).
        world: a :class:`~awch_scale.world.World` sharing the products of M (and
            C) over ranks; ``hess_op`` should share its own (built with the same
            world). Every rank gets the same numbers.
        provenance: a dict the stage's provenance goes into: ``spectra_seconds`` (the
            wall time of each sub-stage), ``spectra_products`` (the operator products
            of each), ``spectra_routes`` (the route or solver of each
            eigenvalue problem and density), ``spectra_scale`` (the scale each accuracy
            is relative to) and ``spectra_notes`` (why a variable holds NaN).

    Returns:
        (data, coords): data maps each registry name to (dims, value); coords has
        ``rank`` and ``angle`` (1..r) and ``grid`` (the densities' abscissae).
    """
    k = V_hess.shape[1]
    if not 0 < r <= k:
        raise ValueError(f"spectra r = {r} must be in 1..k = {k}")
    parts = set(parts)
    if unknown := parts - set(PARTS):
        raise ValueError(f"unknown spectra parts {sorted(unknown)}; allowed: {PARTS}")
    start, clock = time.perf_counter(), _Clock()
    D, N = problem.D, problem.N
    M, Mx, Hp, Hm, C, g = _operators(problem, hess_op, batch_size, second_moment, world)
    kron = isinstance(Hp, KroneckerCombination)
    clock.watch((hess_op, Mx, Hp, Hm) if kron else (hess_op, M))
    gram_ok = M.structure == "linear" or (M.cached and M.world.size == 1)
    route = choose_route(D, N, r, method=method, dense_max=dense_max, gram=gram_ok)
    if "dense" in route.values() and D > DENSE_LIMIT:
        raise ValueError(f"the dense spectra route forms D x D matrices; D = {D} > "
                         f"{DENSE_LIMIT}: use method auto or krylov")
    clock.lap("operators")
    lam1 = abs(float(eigvals[0])) or 1.0
    V_r = V_hess[:, :r].to(torch.float64)
    verify = r + 10  # Lanczos steps of each Krylov result's check for a missed cluster
    routes, notes, scales = {}, {}, {"hp": lam1}
    data: dict[str, tuple] = {}
    H_est, C_est, Hp_est = hess_op, C, Hp
    Md = Hpd = None
    if "dense" in route.values():
        Md = dense_matrix(Mx)
        Hpd = Md - dense_matrix(hess_op)
        H_est, Hp_est = DenseOperator(Md - Hpd), DenseOperator(Hpd)
        C_est = DenseOperator((Md - torch.outer(g, g)) / float(batch_size))
        clock.lap("dense")

    def record(name, var, spec: TopSpectrum, sign=1.0):
        routes[name] = spec.route
        if spec.note:
            notes[var] = spec.note
        data[var] = ("rank", sign * spec.values)

    K = None
    if {"m", "c", "density_m"} & parts and route["m"] == "gram":
        K = M.sample_gram()
        P_r = (projections[:, :r] if projections is not None else M.project(V_r)).to(K)
    m = None
    if "m" in parts or ("density_m" in parts and route["m"] in ("dense", "gram")):
        m = _top(route["m"], "m", Mx, r, Md, K, P_r if K is not None else None, N, V_r,
                 tol=tol, seed=seed, maxiter=maxiter)
        scales["m"] = abs(float(m.values[0]))
        if "m" in parts:
            record("m", "m_eigval", m)
            data["principal_cos"] = ("angle", _cosines(m, "m_eigval", notes))
        clock.lap("m")
    if "c" in parts:
        Kc = Cd = None
        if K is not None:
            Kc = K - K.mean(0, keepdim=True)
            Kc = (Kc - Kc.mean(1, keepdim=True)) / float(batch_size)
            P_r = P_r - P_r.mean(0, keepdim=True)
        if Md is not None:
            Cd = C_est.A
        c = _top(route["c"], "c", C, r, Cd, Kc, P_r if K is not None else None,
                 N * float(batch_size), V_r, tol=tol, seed=seed, maxiter=maxiter)
        scales["c"] = abs(float(c.values[0]))
        record("c", "c_eigval", c)
        data["hc_principal_cos"] = ("angle", _cosines(c, "c_eigval", notes))
        clock.lap("c")
    if {"hp_top", "hp_bottom"} & parts and Hpd is not None:
        hp = dense_top(Hpd, r)
        if "hp_top" in parts:
            record("hp_top", "hp_eigval_top", hp)
        if "hp_bottom" in parts:
            routes["hp_bottom"] = "dense"
            data["hp_eigval_bottom"] = ("rank", hp.spectrum[::-1][:r].copy())
        clock.lap("hp")
    elif {"hp_top", "hp_bottom"} & parts:
        live = None
        if route["hp"] == "krylov" and kron:
            live = live_coordinates(hess_op, M.deltas)  # the exact common null space
        if live is not None and len(live) > r:
            Hp, Hm = Restricted(Hp, live), Restricted(Hm, live)
        else:
            live = None
        zeros = 0 if live is None else D - len(live)
        upper = None
        if "hp_top" in parts and route["hp"] == "krylov" and isinstance(
                hess_op, KroneckerHessianOperator):
            upper = hp_top_bounds(hess_op, M.deltas, r)
            clock.lap("hp_bounds")
        # ranks of the top beyond ``need`` are certified 0 by the bounds: not solved for
        need = r if upper is None else int((upper > tol * lam1).sum())
        specs = {}
        if route["hp"] == "krylov" and need and {"hp_top", "hp_bottom"} <= parts:
            specs["hp_top"], specs["hp_bottom"] = krylov_both(
                Hp, Hm, need, r, tol=tol, scale=lam1, seed=seed, maxiter=maxiter,
                verify=verify)
            clock.lap("hp_both_ends")  # one Lanczos run for both (hp_top: the bounds)
        for part, op in (("hp_top", Hp), ("hp_bottom", Hm)):
            if part not in parts:
                continue
            k_part = need if part == "hp_top" else r
            spec = specs.get(part)
            if spec is None and k_part == 0:
                spec = TopSpectrum(np.zeros(r), route="no solve")
            elif spec is None and route["hp"] == "eigsh":
                spec = eigsh_top(op, r, tol=tol, seed=seed, shift=lam1 * (part == "hp_top"))
            elif spec is None:  # Lanczos, checked on the complement for a missed cluster
                spec = krylov_top(op, k_part, tol=tol, scale=lam1, seed=seed,
                                  maxiter=maxiter, verify=verify)
            if zeros and k_part:
                spec = with_zeros(spec, zeros, k_part)
            if len(spec.values) < r:
                spec.values = np.concatenate([spec.values, np.zeros(r - len(spec.values))])
            if part == "hp_top":
                spec = certify_top(spec, upper, tol * lam1)
            record(part, "hp_eigval_top" if part == "hp_top" else "hp_eigval_bottom", spec,
                   sign=1.0 if part == "hp_top" else -1.0)
            clock.lap(part)
    if "trace" in parts:
        trace, trace_se = hutchinson_trace(H_est, probes, seed, probe_columns)
        data.update(hess_trace=((), trace), hess_trace_se=((), trace_se))
        clock.lap("trace")
    if "comm_full" in parts:
        comm, comm_se = commutation(H_est, C_est, probes, seed + 1, probe_columns)
        data.update(comm_full=((), comm), comm_full_se=((), comm_se))
        clock.lap("comm_full")
    grid = _densities(data, routes, parts, clock, H_est=H_est, Hp_est=Hp_est, Mx=Mx, m=m,
                      D=D, lam1=float(eigvals[0]),
                      probes=density_probes or density_probes_for(probes, D),
                      steps=steps, seed=seed, reorth_bytes=reorth_bytes,
                      grid_size=grid_size, width=width)
    data["seconds_spectra"] = ((), time.perf_counter() - start)
    if provenance is not None:
        provenance.update(spectra_seconds=clock.seconds, spectra_products=clock.products,
                          spectra_routes=routes,
                          spectra_scale=scales)
        if notes:
            provenance["spectra_notes"] = notes
    ranks = np.arange(1, r + 1)
    coords = {"rank": ranks, "angle": ranks}
    if grid is not None:
        coords["grid"] = grid
    return data, coords


def _cosines(spec: TopSpectrum, values: str, notes: dict) -> np.ndarray:
    """Principal cosines from ``spec.overlap``; NaN (with a note) when some eigenvalue
    of that operator is NaN: its top-r eigenspace is then not certain either."""
    cos = overlap_cosines(spec.overlap)
    if np.isnan(spec.values).any():
        name = "principal_cos" if values == "m_eigval" else "hc_principal_cos"
        notes[name] = f"{values} has NaN: its top-r eigenspace is not certain"
        cos = np.full_like(cos, np.nan)
    return cos


def _top(route, name, op, r, dense, K, P, scale_n, V_r, *, tol, seed, maxiter) -> TopSpectrum:
    """Top-r of M or C (``name``) by its route (dense matrix, Gram matrix K, Krylov or
    ARPACK); the Krylov accuracy is relative to the largest eigenvalue found."""
    if route == "dense":
        return dense_top(dense, r, V_r)
    if route == "gram":
        return gram_top(K, r, P, scale_n)
    if route == "eigsh":
        return eigsh_top(op, r, tol=tol, seed=seed, V_r=V_r)
    return krylov_top(op, r, tol=tol, scale=None, seed=seed, maxiter=maxiter, V_r=V_r,
                      verify=r + 10)  # as for H_p


def _densities(data, routes, parts, clock, *, H_est, Hp_est, Mx, m, D, lam1, probes, steps,
               seed, reorth_bytes, grid_size, width):
    """The densities of H, M and H_p switched on, on one grid spanning their spectra."""
    want = [p for p in ("density", "density_m", "density_hp") if p in parts]
    if not want:
        return None
    reorth = probes * min(steps, D) * D * 8 <= reorth_bytes
    quads, supports = {}, {}
    for part in want:
        if part == "density_m" and m is not None and m.spectrum is not None:
            quads[part] = exact_quadrature(m.spectrum, D)
            routes[part] = "exact"
        else:
            op = {"density": H_est, "density_m": Mx, "density_hp": Hp_est}[part]
            quads[part] = lanczos_quadrature(op, probes, steps, seed, reorthogonalize=reorth)
            routes[part] = "slq"
        lo, hi = quadrature_range(quads[part])
        supports[part] = (lo, max(hi, lam1)) if part == "density" else (lo, hi)
        clock.lap(part)
    grid = spectral_grid(list(supports.values()), grid_size)
    for part in want:
        data[part] = ("grid", density_on_grid(quads[part], grid, width, supports[part]))
    return grid
