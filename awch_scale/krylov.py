"""Thick-restart block Krylov eigensolver for the top-k eigenpairs of a symmetric operator.

The alternative to ARPACK's single-vector Lanczos (``eigsh``) when k is large: every
operator call multiplies a block of b vectors at once (one sweep over the data serves
b products, and each product is a GEMM), and the Rayleigh-Ritz step works in a basis
of size m (default 2k, at least k + 2b) rather than ARPACK's ncv = 2k + 1 with its
costly implicit restarts.

Algorithm (block Lanczos with full reorthogonalisation, thick restart):

1. Q = orth(random D x b block, seeded); store Q and A Q.
2. Expand: W = A Q_new, orthogonalise W against the basis twice (classical
   Gram-Schmidt, repeated), QR, append; repeat until the basis has m columns.
3. Rayleigh-Ritz: T = Q^T (A Q), T = S Theta S^T; Ritz vectors Y = Q S, A Y = (A Q) S
   (no new products); residuals R = A Y - Y Theta.
4. Stop when ||r_i|| <= tol * |theta_1| for the k largest Ritz values. Otherwise keep the
   k + b leading Ritz pairs (thick restart) and continue from the residual block of the
   least converged wanted pairs.

Memory: two D x m float64 arrays (basis and its image), O(k D); no D x D array.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class KrylovResult:
    values: np.ndarray  # (k,) descending
    vectors: Tensor  # (D, k) float64
    n_products: int
    n_restarts: int
    converged: bool
    max_residual: float


def _orth_against(W: Tensor, Q: Tensor | None) -> Tensor:
    if Q is not None and Q.shape[1]:
        for _ in range(2):
            W = W - Q @ (Q.T @ W)
    return W


def _orthonormal_block(W: Tensor, Q: Tensor | None, gen: torch.Generator) -> Tensor:
    """Orthonormal columns spanning W's part outside span(Q); rank-deficient directions
    are replaced by fresh random vectors (kept orthogonal to Q)."""
    W = _orth_against(W, Q)
    q, r = torch.linalg.qr(W)
    weak = r.diagonal().abs() <= 1e-10 * max(r.diagonal().abs().max().item(), 1e-300)
    if weak.any():
        fresh = torch.randn(W.shape[0], int(weak.sum()), dtype=W.dtype, generator=gen)
        q[:, weak] = fresh.to(W.device)
        q = _orth_against(q, Q)
        q, _ = torch.linalg.qr(q)
    return q


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
) -> KrylovResult:
    """Top-k (algebraically largest) eigenpairs of the symmetric operator ``matmat``.

    Args:
        matmat: V (D, b) float64 -> A V (D, b) float64.
        D: dimension.
        k: number of eigenpairs, 0 < k < D.
        block: vectors per operator call b.
        basis: maximal basis size m before a restart (default max(2k, k + 2b), <= D).
        tol: convergence when ||A y_i - theta_i y_i|| <= tol * |theta_1| for i <= k.
        max_restarts: restarts allowed before giving up (``converged`` False).
        seed: seeds the start block.
        device: where the basis lives.
    """
    if not 0 < k < D:
        raise ValueError(f"k = {k} must satisfy 0 < k < D = {D}")
    block = max(1, min(block, D - k)) if D > k else 1
    m = min(basis or max(2 * k, k + 2 * block), D)
    gen = torch.Generator().manual_seed(seed)
    keep = min(k + block, m - block)
    Q = _orthonormal_block(torch.randn(D, block, dtype=torch.float64, generator=gen)
                           .to(device), None, gen)
    AQ = matmat(Q)
    n_products, restarts = block, 0
    while True:
        # expand to m columns
        while Q.shape[1] < m:
            b = min(block, m - Q.shape[1])
            new = _orthonormal_block(AQ[:, -b:] if AQ.shape[1] >= b else AQ, Q, gen)[:, :b]
            Q = torch.cat([Q, new], dim=1)
            AQ = torch.cat([AQ, matmat(new)], dim=1)
            n_products += new.shape[1]
        # Rayleigh-Ritz
        T = Q.T @ AQ
        theta, S = torch.linalg.eigh(0.5 * (T + T.T))
        theta, S = theta.flip(0), S.flip(1)
        Y, AY = Q @ S[:, :keep], AQ @ S[:, :keep]
        R = AY - Y * theta[:keep]
        res = torch.linalg.vector_norm(R, dim=0)
        scale = max(abs(theta[0].item()), 1e-300)
        worst = (res[:k] / scale).max().item()
        if worst <= tol or restarts >= max_restarts or m >= D:
            converged = worst <= tol or m >= D
            return KrylovResult(theta[:k].cpu().numpy().copy(), Y[:, :k], n_products,
                                restarts, converged, worst)
        # thick restart: keep the leading Ritz pairs, continue from the worst residuals
        restarts += 1
        order = torch.argsort(res[:k], descending=True)[:block]
        Q, AQ = Y, AY
        Q, r = torch.linalg.qr(Q)  # re-orthonormalise (Y is orthonormal up to rounding)
        AQ = torch.linalg.solve_triangular(r.T, AQ.T, upper=False).T
        new = _orthonormal_block(R[:, order], Q, gen)
        Q = torch.cat([Q, new], dim=1)
        AQ = torch.cat([AQ, matmat(new)], dim=1)
        n_products += new.shape[1]
