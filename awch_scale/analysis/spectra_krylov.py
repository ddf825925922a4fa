"""The Krylov route of the spectra stage (:mod:`awch_scale.analysis.spectra_solvers`):
thick-restart Lanczos on the operator's device with an absolute tolerance, every result's
Rayleigh quotients and residuals recomputed in float64, and a check on the complement of
the vectors found for a missed cluster (:func:`complement_top`), which reruns the block
solver with a block of at least r.

Both ends of H_p come from one Lanczos run (:func:`krylov_both`): its Krylov space holds
both extremes, and at D = 1e6 (top 5 and bottom 5 of H_p) the two separate solves took
108 products where one run for both takes about 60 (benchmarks/results/
cpu-spectra-issue17.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from awch_scale.analysis.spectra_solvers import TopSpectrum, _overlap
from awch_scale.linalg.eigen import rayleigh_residuals, solver_choice
from awch_scale.linalg.krylov import block_krylov_eigh
from awch_scale.linalg.lanczos import thick_restart_lanczos


def complement_top(op, Y: Tensor, steps: int, seed: int) -> tuple[float, float]:
    """The smallest and largest Ritz values of ``op`` on the orthogonal complement of
    span(Y) after ``steps`` Lanczos steps from a seeded random start (float64, full
    reorthogonalisation against Y and the basis, on the device): bounds, from inside,
    of the extreme eigenvalues a Krylov solve that returned Y could have missed. Memory:
    the (D, steps + 1) basis."""
    D = op.shape[0]
    f64 = torch.float64
    Y = Y.to(device=op.device, dtype=f64)
    steps = max(1, min(steps, D - Y.shape[1]))
    Q = torch.zeros(D, steps + 1, dtype=f64, device=op.device)

    def project(w: Tensor, n: int) -> Tensor:
        for _ in range(2):
            w = w - Y @ (Y.T @ w)
            w = w - Q[:, :n] @ (Q[:, :n].T @ w)
        return w

    q = project(torch.from_numpy(np.random.default_rng(seed).standard_normal(D)).to(
        op.device), 0)
    Q[:, 0] = q / torch.linalg.vector_norm(q)
    alpha, beta, size = [], [], 0.0
    for j in range(steps):
        w = op.matmat(Q[:, j:j + 1])[:, 0].to(f64)
        alpha.append(float(Q[:, j] @ w))
        w = project(w, j + 1)
        b = float(torch.linalg.vector_norm(w))
        size = max(size, abs(alpha[-1]), b)
        if j == steps - 1 or b <= 1e-12 * max(size, 1e-300):
            break
        beta.append(b)
        Q[:, j + 1] = w / b
    T = np.diag(alpha) + np.diag(beta[:len(alpha) - 1], 1) + np.diag(beta[:len(alpha) - 1], -1)
    theta = np.linalg.eigvalsh(T)
    return float(theta[0]), float(theta[-1])


LANCZOS_BASIS = 40
"""Smallest Lanczos basis of the spectra's solves: max(2r + 1, LANCZOS_BASIS), at most D
(see :func:`krylov_top`)."""


def _solve(op, r, *, tol, scale, seed, block, maxiter, start):
    """One Krylov solve: (values, float64 residual norms, vectors) sorted descending,
    the solver's name and its cost."""
    D = op.shape[0]
    lanczos = block is None and solver_choice(op, r)["method"] == "lanczos"
    if lanczos:
        dtype = getattr(op, "compute_dtype", torch.float64)
        out = thick_restart_lanczos(op.matmat, D, r, tol=tol / 2, max_restarts=maxiter,
                                    seed=seed, dtype=dtype, device=op.device, scale=scale,
                                    rel_to="first", basis=min(max(2 * r + 1,
                                                                  LANCZOS_BASIS), D))
    else:
        out = block_krylov_eigh(op.matmat, D, r, block=block or 32, tol=tol / 2,
                                max_restarts=maxiter, seed=seed, device=op.device,
                                start=start, scale=scale)
    vals, res = rayleigh_residuals(op, out.vectors)
    order = np.argsort(-vals, kind="stable")
    U = out.vectors[:, torch.from_numpy(order.copy()).to(out.vectors.device)]
    cost = f"{out.n_restarts} restarts, {out.n_products} products"
    return vals[order], res[order], U, "lanczos" if lanczos else f"block{block or 32}", cost


def krylov_top(op, r: int, *, tol: float, scale: float | None, seed: int,
               block: int | None = None, maxiter: int = 50, start: Tensor | None = None,
               V_r: Tensor | None = None, verify: int = 0) -> TopSpectrum:
    """Top-r by a Krylov solver on the operator's device, then checked.

    ``block`` None: the solver :func:`~awch_scale.linalg.eigen.solver_choice` picks for
    ``op`` and r (thick-restart Lanczos below k = 32: at D = 1e6 it needed a fifth of
    the products of the block solver with a block of 10 for the top 10 of H_p, whose
    polynomial degree grows by one per block product); a block size: the block solver
    with that block (warm-started from ``start``). Both stop at residual estimates
    <= tol/2 * ``scale`` (``scale`` None: the largest Ritz value's magnitude, the scale of
    M and C); the returned float64 vectors' Rayleigh quotients and residuals are
    recomputed (r products) and a value whose residual exceeds tol * scale is NaN.

    ``verify`` > 0: a single-vector solver sees one direction of a repeated eigenvalue
    (a cluster larger than r, as the top of H_p of a trained ReLU network), so
    :func:`complement_top` runs ``verify`` steps on the complement of the r vectors
    found. A Ritz value there above the r-th value (+ tol * scale) is a missed
    eigenvalue: the solve is redone by the block solver with a block of max(r, 8) (a
    cluster of that multiplicity is seen) and checked again; values still below a missed
    one are NaN.
    """
    vals, res, U, name, cost = _solve(op, r, tol=tol, scale=scale, seed=seed, block=block,
                                      maxiter=maxiter, start=start)
    if scale is None:
        scale = max(abs(float(vals.max())), abs(float(vals.min())), 1e-300)
    notes = []
    if verify:
        missed = complement_top(op, U, verify, seed + 1)[1]
        if missed > vals[-1] + tol * scale and block is None:
            # a random start block (the found vectors are converged pairs: started from
            # them, the solver would return them at once)
            vals, res, U, name, cost = _solve(op, r, tol=tol, scale=scale, seed=seed,
                                              block=max(r, 8), maxiter=maxiter, start=None)
            name = f"lanczos, missed {missed:.3g}: {name}"
            missed = complement_top(op, U, verify, seed + 2)[1]
        if missed > vals[-1] + tol * scale:
            low = vals < missed
            notes.append(f"{int(low.sum())} of {r} below an eigenvalue >= {missed:.6g} that "
                         "the Krylov solve missed (a cluster larger than its block)")
            vals = np.where(low, np.nan, vals)
    bad = ~(res <= tol * scale)
    if bad.any():
        notes.append(f"{int(bad.sum())} of {r} not within {tol:g} x {scale:.3g}: worst "
                     f"residual {res.max() / scale:.2e} x scale after {cost}; raise "
                     "analysis.spectra.maxiter or loosen analysis.spectra.tol")
        vals = np.where(bad, np.nan, vals)
    return TopSpectrum(vals, _overlap(V_r, U), None, "; ".join(notes) or None, name)


def _checked(op, Y: Tensor, sign: float, tol: float, scale: float, cost: str
             ) -> tuple[np.ndarray, Tensor, list[str]]:
    """Rayleigh quotients of ``sign * op`` for the columns of Y, descending, with the
    vectors in that order and notes for residuals above tol * scale (values NaN)."""
    vals, res = rayleigh_residuals(op, Y)
    vals = sign * vals
    order = np.argsort(-vals, kind="stable")
    vals, res = vals[order], res[order]
    Y = Y[:, torch.from_numpy(order.copy()).to(Y.device)]
    bad = ~(res <= tol * scale)
    notes = []
    if bad.any():
        notes.append(f"{int(bad.sum())} of {len(vals)} not within {tol:g} x {scale:.3g}: "
                     f"worst residual {res.max() / scale:.2e} x scale after {cost}; raise "
                     "analysis.spectra.maxiter or loosen analysis.spectra.tol")
        vals = np.where(bad, np.nan, vals)
    return vals, Y, notes


def krylov_both(op, neg, top: int, bottom: int, *, tol: float, scale: float, seed: int,
                maxiter: int = 50, verify: int = 0) -> tuple[TopSpectrum, TopSpectrum]:
    """The ``top`` largest eigenvalues of ``op`` and the ``bottom`` largest of ``neg`` =
    -op (its smallest, negated), from one thick-restart Lanczos run that keeps Ritz
    vectors of both ends (:func:`~awch_scale.linalg.lanczos.thick_restart_lanczos` with
    ``bottom``), checked as :func:`krylov_top` checks: residuals recomputed in float64,
    and one complement run (``verify`` steps) whose smallest and largest Ritz values
    reveal a miss at either end; an end with a miss is solved again by
    :func:`krylov_top` on ``op`` or ``neg`` (with its own check and block fallback).
    """
    D = op.shape[0]
    dtype = getattr(op, "compute_dtype", torch.float64)
    out = thick_restart_lanczos(op.matmat, D, top, tol=tol / 2, max_restarts=maxiter,
                                seed=seed, dtype=dtype, device=op.device, scale=scale,
                                rel_to="first", bottom=bottom,
                                basis=min(max(2 * (top + bottom) + 1, LANCZOS_BASIS), D))
    cost = f"{out.n_restarts} restarts, {out.n_products} products (both ends)"
    hi, U, hi_notes = _checked(op, out.vectors, 1.0, tol, scale, cost)
    lo, L, lo_notes = _checked(op, out.bottom_vectors, -1.0, tol, scale, cost)
    specs = [TopSpectrum(hi, None, None, "; ".join(hi_notes) or None, "lanczos, both ends"),
             TopSpectrum(lo, None, None, "; ".join(lo_notes) or None, "lanczos, both ends")]
    if verify:
        low, high = complement_top(op, torch.cat([U, L], 1), verify, seed + 1)
        finite_hi, finite_lo = hi[np.isfinite(hi)], lo[np.isfinite(lo)]
        if len(finite_hi) and high > finite_hi.min() + tol * scale:
            specs[0] = krylov_top(op, top, tol=tol, scale=scale, seed=seed, maxiter=maxiter,
                                  verify=verify)
            specs[0].route = f"both ends missed {high:.3g}: {specs[0].route}"
        if len(finite_lo) and -low > finite_lo.min() + tol * scale:
            specs[1] = krylov_top(neg, bottom, tol=tol, scale=scale, seed=seed,
                                  maxiter=maxiter, verify=verify)
            specs[1].route = f"both ends missed {low:.3g}: {specs[1].route}"
    return specs[0], specs[1]
