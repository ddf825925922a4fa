"""Thick-restart block Krylov eigensolver for the top-k eigenpairs of a symmetric operator.

The alternative to ARPACK's single-vector Lanczos (``eigsh``) when k is large: every
operator call multiplies a block of b vectors at once (one sweep over the data serves
b products, and each product is a GEMM), and the Rayleigh-Ritz step works in a basis
of size m (default :func:`default_basis`: max(3k, k + 4b) where memory allows, at
least max(2k, k + 2b)) rather than ARPACK's ncv = 2k + 1 with its costly implicit
restarts.

Algorithm (block Lanczos with full reorthogonalisation, thick restart):

1. Q = orth(random D x b block, seeded); store Q and A Q in preallocated D x m arrays.
2. Expand: W = A Q_last; C = Q^T W is both T's new column block and the first
   Gram-Schmidt coefficients, W = W - Q C, one more classical Gram-Schmidt pass, QR,
   append; repeat until the basis has m columns.
3. Rayleigh-Ritz: T = Q^T (A Q) (assembled block by block, never recomputed whole),
   T = S Theta S^T; Q and A Q are rotated in place to the Ritz vectors Y = Q S and
   A Y = (A Q) S (row block by row block; no new products, no QR: Y is orthonormal to
   rounding); residuals R = A Y - Y Theta of the k wanted pairs.
4. Stop when ||r_i|| <= tol |theta_1| (``rel_to="first"``) or ||r_i|| <= tol |theta_i|
   (``rel_to="self"``) for the k largest Ritz values. Otherwise keep the k + b leading
   Ritz pairs (thick restart: their block of T is diag(theta)) and continue from the
   residual block of the least converged wanted pairs.

Memory: two D x m float64 arrays (basis and its image) and D x b temporaries, O(k D);
no D x D array.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class KrylovResult:
    """Eigenpairs of :func:`block_krylov_eigh` with its cost and convergence."""

    values: np.ndarray  # (k,) descending
    vectors: Tensor  # (D, k) float64
    n_products: int
    n_restarts: int
    converged: bool
    max_residual: float


def _tdot(A: Tensor, B: Tensor) -> Tensor:
    """A^T B for tall A (D, n) and B (D, b), computed as (B^T A)^T.

    Same numbers, but MKL's path for B^T A is much faster here when b is small: measured
    (one thread, float64) 0.33 s against 0.040 s at D = 2.5e5, n = 140, b = 4, and 0.41 s
    against 0.29 s at D = 1e6, n = 100, b = 32 (A^T B is never faster)."""
    return (B.T @ A).T


def _orth_against(W: Tensor, Q: Tensor | None, passes: int = 2) -> Tensor:
    if Q is not None and Q.shape[1]:
        for _ in range(passes):
            W = W - Q @ _tdot(Q, W)
    return W


def _orthonormal_block(W: Tensor, Q: Tensor | None, gen: torch.Generator,
                       coeffs: Tensor | None = None) -> Tensor:
    """Orthonormal columns spanning W's part outside span(Q); rank-deficient directions
    are replaced by fresh random vectors (kept orthogonal to Q).

    Classical Gram-Schmidt, twice. ``coeffs`` = Q^T W when the caller has it already
    (it is a column block of T = Q^T A Q in the Lanczos expansion): the first pass then
    costs one GEMM instead of two.
    """
    if coeffs is not None:
        W = _orth_against(W - Q @ coeffs, Q, passes=1)
    else:
        W = _orth_against(W, Q)
    q, r = torch.linalg.qr(W)
    weak = r.diagonal().abs() <= 1e-10 * max(r.diagonal().abs().max().item(), 1e-300)
    if weak.any():
        fresh = torch.randn(W.shape[0], int(weak.sum()), dtype=W.dtype, generator=gen)
        q[:, weak] = fresh.to(W.device)
        q = _orth_against(q, Q)
        q, _ = torch.linalg.qr(q)
    return q


BASIS_BYTES = 3 << 29
"""Memory allowed for the basis Q and its image A Q (2 D m float64 values) when choosing
the default basis size: 1.5 GiB, so that at D = 1e6 (floor m = max(2k, k + 2b)) the
whole analysis stays under 3 GiB. Measured (FC 784-200-200-10, target fc2, D = 4e4, N = 2000,
k = 50, b = 32, one thread, loaded 2-core machine): m = 114 took 1124 products and 42 s,
m = 146 836 products and 27 s, m = 178 708 products and 18 s."""


def default_basis(D: int, k: int, block: int, basis_bytes: int = BASIS_BYTES) -> int:
    """max(3k, k + 4b), reduced to fit 2 D m float64 values in ``basis_bytes``, but never
    below max(2k, k + 2b) (the smallest basis the thick restart works with)."""
    floor, want = max(2 * k, k + 2 * block), max(3 * k, k + 4 * block)
    fits = basis_bytes // (16 * max(D, 1))
    return int(max(floor, min(want, fits)))


def _rotate_inplace(X: Tensor, S: Tensor, rows: int = 1 << 15) -> None:
    """X[:, :c] = X @ S (S is (m, c)) in place, row block by row block: no (D, c) temporary."""
    c = S.shape[1]
    for r in range(0, X.shape[0], rows):
        X[r:r + rows, :c] = X[r:r + rows] @ S


def _residual_norms(Q: Tensor, AQ: Tensor, theta: Tensor, rows: int = 1 << 15) -> Tensor:
    """||A y_i - theta_i y_i|| for the columns i < len(theta), row block by row block: no
    (D, k) temporary."""
    k = len(theta)
    sq = torch.zeros(k, dtype=Q.dtype, device=Q.device)
    for r in range(0, Q.shape[0], rows):
        sq += ((AQ[r:r + rows, :k] - Q[r:r + rows, :k] * theta) ** 2).sum(0)
    return sq.sqrt()


def _residual_columns(Q: Tensor, AQ: Tensor, theta: Tensor, cols: Tensor) -> Tensor:
    """The residual vectors A y_i - theta_i y_i of the columns ``cols``, (D, len(cols))."""
    return AQ[:, cols] - Q[:, cols] * theta[cols]


def _relative_residuals(res: Tensor, theta: Tensor, rel_to: str,
                        scale: float | None = None) -> Tensor:
    """||r_i|| / |theta_1| (``first``) or ||r_i|| / |theta_i| (``self``) for the k wanted,
    or ||r_i|| / ``scale`` when a scale is given (an absolute tolerance: for eigenvalues
    in a cluster near 0, where |theta_1| is no scale)."""
    if scale is not None:
        return res / max(float(scale), 1e-300)
    scale1 = max(abs(theta[0].item()), 1e-300)
    scale = (torch.clamp(theta.abs(), min=1e-12 * scale1) if rel_to == "self"
             else torch.full_like(res, scale1))
    return res / scale


def block_krylov_eigh(
    matmat: Callable[[Tensor], Tensor],
    D: int,
    k: int,
    *,
    block: int = 32,
    basis: int | None = None,
    tol: float = 1e-6,
    max_restarts: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
    rel_to: str = "first",
    basis_bytes: int = BASIS_BYTES,
    start: Tensor | None = None,
    scale: float | None = None,
) -> KrylovResult:
    """Top-k (algebraically largest) eigenpairs of the symmetric operator ``matmat``.

    Args:
        matmat: V (D, b) float64 -> A V (D, b) float64.
        D: dimension.
        k: number of eigenpairs, 0 < k < D.
        block: vectors per operator call b.
        basis: maximal basis size m before a restart (default: max(3k, k + 4b) while the
            two float64 D x m arrays fit in ``basis_bytes``, but at least max(2k, k + 2b);
            always <= D). A larger basis converges in fewer products and spreads each
            restart's rotation over more new vectors (see :data:`BASIS_BYTES`).
        tol: convergence tolerance on the Ritz residuals r_i = A y_i - theta_i y_i.
        max_restarts: restarts allowed before giving up (``converged`` False).
        seed: seeds the start block (and the random vectors that replace dependent ones).
        basis_bytes: memory the default basis size may use (see :data:`BASIS_BYTES`).
        start: vectors (D, s) to start from instead of a random block (warm start); the
            basis grows from them and their images as from any start block.
        device: where the basis lives.
        rel_to: ``first``: ||r_i|| <= tol |theta_1| for i <= k (one scale for all);
            ``self``: ||r_i|| <= tol |theta_i| for every i <= k (per-eigenvalue rule, for
            fits of log lambda_i down to i = k; |theta_i| is floored at 1e-12 |theta_1|).
            ``max_residual`` is reported in the same units.
        scale: when given, the rule is ||r_i|| <= tol * ``scale`` for i <= k instead (an
            absolute tolerance; ``rel_to`` is then ignored).

    Cost per restart cycle (m - keep new vectors, keep = min(k + b, m - b)): the products,
    4 D m b (two classical Gram-Schmidt passes) + 2 D m b (new columns of T = Q^T A Q,
    built incrementally: the kept part is diag(theta)) per new block, and 2 D m keep for
    the in-place rotation of Q and A Q to the Ritz vectors (no QR: they are orthonormal to
    rounding). Memory: Q and A Q, 2 D m float64 values, and no other D x m array.
    """
    if not 0 < k < D:
        raise ValueError(f"k = {k} must satisfy 0 < k < D = {D}")
    if rel_to not in ("first", "self"):
        raise ValueError(f"rel_to {rel_to!r} must be 'first' or 'self'")
    block = max(1, min(block, D - k)) if D > k else 1
    m = min(basis or default_basis(D, k, block, basis_bytes), D)
    gen = torch.Generator().manual_seed(seed)
    keep = min(k + block, m - block)
    f64 = torch.float64
    Q = torch.empty(D, m, dtype=f64, device=device)
    AQ = torch.empty(D, m, dtype=f64, device=device)
    T = torch.zeros(m, m, dtype=f64, device=device)

    def append(new: Tensor, n: int) -> int:
        b = new.shape[1]
        Q[:, n:n + b] = new
        AQ[:, n:n + b] = matmat(new)
        return n + b

    def fill_t(t0: int, n: int) -> Tensor:
        """T[:n, t0:n] = Q[:, :n]^T AQ[:, t0:n] (and its transpose); returns the block."""
        col = _tdot(Q[:, :n], AQ[:, t0:n])
        T[:n, t0:n] = col
        T[t0:n, :n] = col.T
        return col

    if start is not None:  # warm start: the given vectors (at most m - block of them)
        first = start[:, :max(block, min(start.shape[1], m - block))].to(device=device, dtype=f64)
    else:
        first = torch.randn(D, block, dtype=f64, generator=gen).to(device)
    n = append(_orthonormal_block(first, None, gen), 0)
    t_done = 0  # T is known for the columns < t_done
    n_products, restarts = n, 0
    if start is not None and n >= k:
        # Rayleigh-Ritz on the start vectors first: a good guess (the Hessian's V for the
        # Fisher) converges without filling the basis; otherwise continue as after a
        # thick restart, from the residuals of the least converged pairs.
        fill_t(0, n)
        theta, S = torch.linalg.eigh(0.5 * (T[:n, :n] + T[:n, :n].T))
        theta, S = theta.flip(0), S.flip(1)
        _rotate_inplace(Q[:, :n], S)
        _rotate_inplace(AQ[:, :n], S)
        rel = _relative_residuals(_residual_norms(Q, AQ, theta[:k]), theta[:k], rel_to, scale)
        if rel.max().item() <= tol:
            del AQ
            return KrylovResult(theta[:k].cpu().numpy().copy(), Q[:, :k].clone(), n_products,
                                0, True, rel.max().item())
        T.zero_()
        T[:n, :n] = torch.diag(theta)
        order = torch.argsort(rel, descending=True)[:block]
        new = _orthonormal_block(_residual_columns(Q, AQ, theta, order), Q[:, :n], gen)
        t_done = n
        n = append(new, n)
        n_products += new.shape[1]
    while True:
        # expand to m columns (block Lanczos: the next block from the last block's
        # images, whose projections Q^T A q are also T's new columns)
        while n < m:
            b = min(block, m - n)
            C = fill_t(t_done, n)
            new = _orthonormal_block(AQ[:, t_done:n], Q[:, :n], gen, coeffs=C)[:, :b]
            t_done = n
            n = append(new, n)
            n_products += b
        fill_t(t_done, n)
        # Rayleigh-Ritz
        theta, S = torch.linalg.eigh(0.5 * (T + T.T))
        theta, S = theta.flip(0), S.flip(1)
        _rotate_inplace(Q, S[:, :keep])
        _rotate_inplace(AQ, S[:, :keep])
        rel = _relative_residuals(_residual_norms(Q, AQ, theta[:k]), theta[:k], rel_to, scale)
        worst = rel.max().item()
        if worst <= tol or restarts >= max_restarts or m >= D:
            converged = worst <= tol or m >= D
            del AQ  # before the copy of the k vectors: peak 1 + k/m basis sizes, not 2
            return KrylovResult(theta[:k].cpu().numpy().copy(), Q[:, :k].clone(), n_products,
                                restarts, converged, worst)
        # thick restart: keep the leading Ritz pairs, continue from the worst residuals
        restarts += 1
        T.zero_()
        T[:keep, :keep] = torch.diag(theta[:keep])
        order = torch.argsort(rel, descending=True)[:block]
        new = _orthonormal_block(_residual_columns(Q, AQ, theta, order), Q[:, :keep], gen)
        t_done = keep
        n = append(new, keep)
        n_products += new.shape[1]
