"""Top-k eigenpairs of a matrix-free symmetric operator (SPEC section 2)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh
from torch import Tensor

from .errors import ConvergenceError
from .operators import BlockOperator


@dataclass
class Eigenbasis:
    """Eigenpairs sorted by eigenvalue, largest first.

    Attributes:
        values: lambda_1 >= ... >= lambda_k, float64, shape (k,).
        vectors: V = [v_1..v_k], shape (D, k), float64, on the operator's device; the
            entry of largest magnitude of each v_i is positive.
        residuals: ||A v_i - lambda_i v_i|| / |lambda_1|, shape (k,).
        n_products: operator-vector products used (eigensolver + residual check).
        seconds: wall time.
    """

    values: np.ndarray
    vectors: Tensor
    residuals: np.ndarray
    n_products: int
    seconds: float


def fix_signs(vectors: Tensor) -> Tensor:
    """Flip columns so that each column's entry of largest magnitude is positive."""
    idx = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[idx, torch.arange(vectors.shape[1], device=vectors.device)])
    signs[signs == 0] = 1
    return vectors * signs


def residuals(op: BlockOperator, values: np.ndarray, vectors: Tensor) -> np.ndarray:
    """||A v_i - lambda_i v_i|| / |lambda_1| from one batched product A V."""
    AV = op.matmat(vectors)
    lam = torch.as_tensor(values, dtype=AV.dtype, device=AV.device)
    r = torch.linalg.vector_norm(AV - vectors.to(AV.dtype) * lam, dim=0)
    scale = abs(values[0]) if values.size and values[0] != 0 else 1.0
    return (r / scale).cpu().numpy()


def zero_operator_error() -> ConvergenceError:
    """The error of every eigensolver when the operator maps its start vectors to zero."""
    return ConvergenceError(
        "the Hessian of the target block maps the eigensolver's start vectors to zero: its "
        "curvature vanishes, as for a dead network (every unit before or after the target "
        "switched off or saturated, e.g. after a diverging step that gradient clipping "
        "hid); check train_loss/train_acc of this checkpoint and lower train.lr")


BLOCK_FROM_K = 32
"""``method="auto"`` uses the block Krylov solver from this k on, ARPACK below it."""


def top_eigenpairs(
    op: BlockOperator,
    k: int,
    *,
    method: str = "auto",
    tol: float = 1e-6,
    maxiter: int | None = None,
    ncv: int | None = None,
    block: int = 32,
    seed: int = 0,
    rel_to: str = "first",
    guess: Tensor | None = None,
) -> Eigenbasis:
    """The k algebraically largest eigenpairs of ``op``.

    Args:
        op: the symmetric operator.
        k: number of eigenpairs, 0 < k < D.
        method: ``eigsh`` (ARPACK Lanczos, which='LA', one vector per product),
            ``block`` (thick-restart block Krylov, :mod:`awch_scale.krylov`, ``block``
            vectors per product; faster for large k), or ``auto`` (block for
            k >= BLOCK_FROM_K).
        tol: relative tolerance (eigsh's ``tol``, which ARPACK applies per eigenvalue,
            ||r_i|| <= tol |lambda_i|; block: see ``rel_to``).
        maxiter: eigsh iterations / block restarts allowed.
        ncv: eigsh Lanczos basis size; block: basis size before a restart.
        block: block size of the block solver.
        seed: seeds the start vector (block), so results are deterministic.
        rel_to: the block solver's stopping rule: ``first``, ||r_i|| <= tol |lambda_1|
            for i <= k, or ``self``, ||r_i|| <= tol |lambda_i| for every i <= k (the
            per-eigenvalue rule, needed when gamma is fitted on log lambda_i down to
            i = k and lambda_k << lambda_1). The stored residuals stay relative to
            |lambda_1| (SPEC 2) whatever the rule.
        guess: approximate eigenvectors (D, s) the block solver starts from instead of a
            random block (e.g. the Hessian's V for the Fisher, which is close to H near a
            minimum); ARPACK ignores it. Only the speed depends on it.

    Raises:
        ValueError: k is not in 1..D-1 or the method is unknown.
        ConvergenceError: the solver did not converge; the message says how far it got.
            Also when the operator is zero (every product with the start vectors and the
            returned eigenvectors is exactly 0, as for a dead network), whatever the
            method, with the message of :func:`zero_operator_error`.
    """
    D = op.shape[0]
    if not 0 < k < D:
        raise ValueError(f"k = {k} must satisfy 0 < k < D = {D}")
    if rel_to not in ("first", "self"):
        raise ValueError(f"rel_to {rel_to!r} must be 'first' or 'self'")
    if method == "auto":
        method = "block" if k >= BLOCK_FROM_K else "eigsh"
    start, n0 = time.perf_counter(), op.n_products
    if method == "block":
        vals, V = _block(op, k, tol=tol, maxiter=maxiter, basis=ncv, block=block, seed=seed,
                         rel_to=rel_to, start=guess)
    elif method == "eigsh":
        vals, V = _eigsh(op, k, tol=tol, maxiter=maxiter, ncv=ncv, seed=seed)
    else:
        raise ValueError(f"unknown eigensolver {method!r}; allowed: auto, eigsh, block")
    V = fix_signs(V)
    res = residuals(op, vals, V)
    if not np.any(vals) and not np.any(res):
        # A V = 0 exactly for every returned vector: the Krylov space of a random start
        # collapsed, i.e. the operator is zero. ARPACK stops with "starting vector is
        # zero"; the block solver "converges" to zeros, which would give gamma = NaN.
        raise zero_operator_error()
    return Eigenbasis(vals, V, res, op.n_products - n0, time.perf_counter() - start)


def _block(op, k, *, tol, maxiter, basis, block, seed, rel_to="first", start=None):
    from .krylov import block_krylov_eigh

    out = block_krylov_eigh(op.matmat, op.shape[0], k, block=block, basis=basis, tol=tol,
                            max_restarts=100 if maxiter is None else maxiter, seed=seed,
                            device=op.problem.device, rel_to=rel_to, start=start)
    if not out.converged:
        raise ConvergenceError(
            f"block Krylov did not converge: worst relative residual {out.max_residual:.2e} "
            f"> tol {tol} after {out.n_restarts} restarts (k = {k}); raise "
            "analysis.eigen.maxiter or ncv, loosen tol, or lower k"
        )
    return out.values, out.vectors


def _eigsh(op, k, *, tol, maxiter, ncv, seed):
    D = op.shape[0]
    v0 = np.random.default_rng(seed).standard_normal(D)
    try:
        vals, vecs = eigsh(op.to_scipy(), k=k, which="LA", v0=v0, tol=tol, maxiter=maxiter,
                           ncv=ncv)
    except ArpackNoConvergence as exc:
        raise ConvergenceError(
            f"eigsh converged {len(exc.eigenvalues)} of k = {k} eigenpairs within its "
            f"iteration budget (tol={tol}, maxiter={maxiter}, ncv={ncv}); raise "
            "analysis.eigen.maxiter or ncv, loosen tol, or lower k"
        ) from None
    except ArpackError as exc:
        if "starting vector is zero" in str(exc).lower():
            raise zero_operator_error() from None
        raise ConvergenceError(f"eigsh failed (k = {k}, D = {D}): {exc}") from None
    order = np.argsort(vals)[::-1]
    vals = np.ascontiguousarray(vals[order])
    return vals, torch.from_numpy(np.ascontiguousarray(vecs[:, order])).to(op.problem.device)
