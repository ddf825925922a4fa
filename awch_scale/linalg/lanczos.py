"""Thick-restart Lanczos for the top-k eigenpairs, its basis in the products' precision.

Why it exists beside ARPACK (``eigsh``): at D = 1e6, k = 50 ARPACK's ``dsaupd`` spends
about as long per step re-orthogonalising against its float64 basis of ncv = 101
vectors (memory-bound level-2 BLAS, one thread, ~0.16 s) as the operator product
itself (benchmarks/results/cpu-issue10.md), so only ~50% of the eigen stage is
products. This solver does the same Krylov work with less memory traffic:

- the basis is stored as rows (m + 1, D) in the dtype the operator computes its
  products in (float32 for a float32 model: half of ARPACK's traffic; a float64 model
  keeps a float64 basis), and every pass over it is one torch matrix-vector product on
  all threads;
- each step first applies the local three-term recurrence in float64 (exact in exact
  arithmetic), then **one** classical Gram-Schmidt pass removes the rounding components;
  a second pass runs only when the first removed more than 30% of the norm (the DGKS
  criterion, as ARPACK's ``dsaitr``), which after the local step is rare;
- partial reorthogonalisation against the kept Ritz vectors: the pass always covers
  the vectors added since the last restart, but the kept Ritz vectors y_i (most of the
  basis) only when an estimate of |y_i^T q_{j+1}| exceeds ``eta`` (sqrt(eps), Simon's
  semi-orthogonality). From A y_i = theta_i y_i + sigma_i q_l (the thick restart's
  exact relation) the estimate follows the recurrence
  tau_{j+1} = (|theta_i - alpha_j| tau_j + beta_{j-1} tau_{j-1} + sigma_i eps
  + 2 eps |theta_1|) / beta_j + eps, reset to eps after a pass. At D = 1e6 (float32,
  k = 50) it skipped the kept vectors at 51 of 125 steps, and overestimated the measured
  components (~1e-5) by ~5x: it errs on the safe side;
- restarts are thick (Wu & Simon, SIAM J. Matrix Anal. Appl. 22 (2000) 602): the
  ``keep`` leading Ritz vectors and the residual direction are kept, so T becomes an
  arrowhead matrix and no implicit QR shifts are applied;
- the float64 correction: the k returned vectors Y = Q S are formed in the basis's
  dtype in place of its leading rows, copied out in float64 once the basis is dropped,
  re-orthonormalised by a Cholesky QR (cheap, exact to float64 rounding for the nearly
  orthonormal Y) and :func:`awch_scale.linalg.eigen.top_eigenpairs` replaces the Ritz values
  by the Rayleigh quotients y_i^T A y_i of these float64 vectors, computed from the
  same products as the residual check (no extra product). Their error is of order
  ||r_i||^2 / gap rather than the float32 basis's rounding.

- host round trips: a step reads two pairs of scalars from the basis's device (alpha with
  ||w||, then the Gram-Schmidt diagonal with beta; a third pair after a DGKS pass), 2.2
  conversions per product counted in tests/test_lanczos.py (6.5 when each scalar was read
  alone); T (m x m), its eigenproblem at a restart and the kept-vector estimates live on
  the host, and S crosses to the device once per restart.

Measured against ARPACK and dense ``eigh`` in tests/test_eigen.py (same eigenvalues,
subspaces and residual bounds) and at D = 1e6 in benchmarks/bench_issue10.py.

Memory: the (m + 1, D) basis, then its k leading rows and the (D, k) float64 result
(never the basis and the result together), and O(D) temporaries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from awch_scale.linalg.krylov import _relative_residuals

DGKS = 0.717
"""A second Gram-Schmidt pass runs when the first leaves less than this fraction of the
vector's norm (ARPACK's constant, 1/sqrt(2) rounded up)."""

COLUMNS = 1 << 16
"""Columns of the basis rotated at a time in a restart (a (m, COLUMNS) temporary)."""


@dataclass
class LanczosResult:
    """Eigenpairs of :func:`thick_restart_lanczos` with its cost and convergence.

    Attributes:
        values: Ritz values theta_1 >= ... >= theta_k, float64.
        vectors: (D, k) float64 Ritz vectors, orthonormal to float64 rounding.
        n_products: operator products (one vector each).
        n_restarts: thick restarts done.
        converged: every Ritz estimate met the tolerance.
        max_residual: the largest Ritz estimate |beta_m s_{m,i}| in the units of
            ``rel_to``.
        kept_passes: steps after a restart's first whose Gram-Schmidt pass included
            the kept Ritz vectors (the others skipped them, see ``eta``).
        checks: (measured, estimated) orthogonality to the kept Ritz vectors at the
            steps that skipped them, with ``check_estimates=True``.
        bottom_values: with ``bottom`` > 0, the ``bottom`` smallest Ritz values,
            ascending (and ``bottom_vectors`` their float64 Ritz vectors).
    """

    values: np.ndarray
    vectors: Tensor
    n_products: int
    n_restarts: int
    converged: bool
    max_residual: float
    kept_passes: int = 0
    checks: list | None = None
    bottom_values: np.ndarray | None = None
    bottom_vectors: Tensor | None = None


def default_basis(D: int, k: int) -> int:
    """ARPACK's default basis size, max(2k + 1, 20), at most D."""
    return min(max(2 * k + 1, 20), D)


def default_keep(k: int, m: int) -> int:
    """Ritz vectors kept at a thick restart: k + (m - k) // 2 (at most m - 1)."""
    return min(k + (m - k) // 2, m - 1)


def default_eta(dtype: torch.dtype) -> float:
    """sqrt(eps) of the basis's dtype: the semi-orthogonality level (Simon, Math. Comp. 42
    (1984) 115) to the kept Ritz vectors above which a step orthogonalises against them.
    Below it the Ritz values of T are accurate to working precision; at D = 1e6 (float32)
    the final residuals and eigenvalues were those of a pass at every step."""
    return torch.finfo(dtype).eps ** 0.5


def _norm_t(w: Tensor) -> Tensor:
    """||w|| accumulated in float64, a 0-dim tensor on w's device (torch's float32 norm of
    a 1e6-vector is off by ~1e-5 relative, which left the basis vectors' norms, and so
    orthogonality, at 5e-5)."""
    return torch.linalg.vector_norm(w, dtype=torch.float64)


def _scalars(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Two float64 0-dim device tensors as Python floats in one device-to-host copy: a
    step's only host round trips are two of these (three when the DGKS pass runs)."""
    x, y = torch.stack([a, b]).tolist()
    return x, y


def _orthogonalise(w: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """One classical Gram-Schmidt pass of w against the rows of Q: (w - Q^T c, c)."""
    c = Q @ w
    return torch.addmv(w, Q.T, c, alpha=-1), c


def _fresh_direction(Q: Tensor, gen: torch.Generator) -> Tensor:
    """A random unit vector orthogonal to the rows of Q (two passes), for an invariant
    subspace (beta = 0); zero if Q already spans the space."""
    w = torch.randn(Q.shape[1], dtype=torch.float64, generator=gen).to(Q)
    for _ in range(2):
        w, _ = _orthogonalise(w, Q)
    n = torch.linalg.vector_norm(w)
    return w / n if n > 0 else w


def _orthonormal_float64(Yt: Tensor) -> Tensor:
    """The rows of Yt (c, D) as (D, c) float64 columns, re-orthonormalised in float64 by a
    Cholesky QR: Y R^{-1} with Y^T Y = R^T R (cheap, exact to float64 rounding for the
    nearly orthonormal Ritz vectors), column block by column block of Yt."""
    c, D = Yt.shape
    Y = torch.empty(D, c, dtype=torch.float64, device=Yt.device)
    for j in range(0, D, COLUMNS):
        Y[j:j + COLUMNS] = Yt[:, j:j + COLUMNS].T
    R, info = torch.linalg.cholesky_ex(Y.T @ Y, upper=True)
    if info.item() != 0:  # Y far from orthonormal (not seen; a safe fallback)
        return torch.linalg.qr(Y).Q
    eye = torch.eye(R.shape[0], dtype=R.dtype, device=R.device)
    Rinv = torch.linalg.solve_triangular(R, eye, upper=True)
    for j in range(0, D, COLUMNS):
        Y[j:j + COLUMNS] = Y[j:j + COLUMNS] @ Rinv
    return Y


def _rotate_rows(Q: Tensor, S: Tensor) -> None:
    """Q[:c] = S^T Q[:m] in place (S is (m, c), c <= m), column block by column block."""
    m, c = S.shape
    St = S.T.to(Q.dtype).contiguous()
    for j in range(0, Q.shape[1], COLUMNS):
        Q[:c, j:j + COLUMNS] = St @ Q[:m, j:j + COLUMNS]


def thick_restart_lanczos(
    matvec: Callable[[Tensor], Tensor],
    D: int,
    k: int,
    *,
    basis: int | None = None,
    tol: float = 1e-6,
    max_restarts: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    rel_to: str = "self",
    eta: float | None = None,
    check_estimates: bool = False,
    scale: float | None = None,
    bottom: int = 0,
) -> LanczosResult:
    """Top-k (algebraically largest) eigenpairs of the symmetric operator ``matvec``.

    Args:
        matvec: v (D,) in ``dtype`` -> A v (D,) float64.
        D: dimension.
        k: number of eigenpairs, 0 < k < D.
        basis: basis size m before a restart (default :func:`default_basis`, ARPACK's
            ncv = 2k + 1); k < m <= D.
        tol: the Ritz estimates |beta_m s_{m,i}| (= ||A y_i - theta_i y_i|| in exact
            arithmetic) must be <= tol |theta_i| (``rel_to="self"``, ARPACK's rule) or
            <= tol |theta_1| (``"first"``) for i <= k.
        max_restarts: thick restarts allowed (default max(100, 10 D / m)).
        seed: seeds the start vector (and those that replace an invariant subspace).
        dtype: the basis's dtype, the operator's compute dtype (float32 or float64).
        device: where the basis lives.
        rel_to: ``self`` or ``first``, see ``tol``.
        scale: when given, the rule is |beta_m s_{m,i}| <= tol * ``scale`` instead (an
            absolute tolerance, for eigenvalues near 0; ``rel_to`` is then ignored).
        bottom: also the ``bottom`` algebraically smallest pairs, from the same Krylov
            space (both ends at once: the thick restart keeps Ritz vectors of both, the
            extra ones split between them; the smallest are checked by the same rule
            with |theta| of theirs). 0: the top only, exactly as without it.
        eta: orthogonality to the kept Ritz vectors that triggers a pass against them
            (default :func:`default_eta`; 0 orthogonalises against them at every step).
        check_estimates: at every step that skips the kept Ritz vectors, also measure
            max_i |y_i^T q_{j+1}| (one more pass; for tests) and return the pairs
            (measured, estimate) as ``LanczosResult.checks``.

    Cost per step: one product, 2 D (j + 1) basis values read (one Gram-Schmidt pass
    over the j + 1 vectors so far, two reads; 2 D (j + 1 - keep) when the kept Ritz
    vectors are skipped), rarely twice that. Per restart: the
    rotation of the basis to the ``keep`` = k + (m - k) // 2 leading Ritz vectors,
    2 D m keep flops, in place.
    """
    if not 0 < k < D:
        raise ValueError(f"k = {k} must satisfy 0 < k < D = {D}")
    if rel_to not in ("first", "self"):
        raise ValueError(f"rel_to {rel_to!r} must be 'first' or 'self'")
    m = min(basis or default_basis(D, k + bottom), D)
    if m <= k + bottom:
        raise ValueError(f"the basis size {m} must exceed k = {k} (+ bottom = {bottom})")
    keep = default_keep(k + bottom, m)
    # the kept Ritz vectors: the leading ``top`` and, with ``bottom``, the trailing ones
    top = keep if not bottom else k + (keep - k - bottom) // 2
    kept_idx = torch.cat([torch.arange(top), torch.arange(m - (keep - top), m)])
    tol_scale = scale  # the absolute tolerance's scale (``scale`` is reused below)
    max_restarts = max(100, 10 * D // m) if max_restarts is None else max_restarts
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    Q = torch.empty(m + 1, D, dtype=dtype, device=device)
    T = torch.zeros(m, m, dtype=f64)
    q = torch.from_numpy(np.random.default_rng(seed).standard_normal(D)).to(device)
    Q[0] = q / torch.linalg.vector_norm(q)
    start, n_kept, beta_prev = 0, 0, 0.0
    n_products = restarts = 0
    scale = 0.0  # largest |theta| seen: the size of A, for the invariant-subspace test
    eps = torch.finfo(dtype).eps
    eta = default_eta(dtype) if eta is None else eta
    kept_passes = 0
    theta_kept = sigma_kept = tau = tau_prev = size = None  # set at the first restart
    checks = [] if check_estimates else None
    while True:
        for j in range(start, m):
            w = matvec(Q[j])
            n_products += 1
            if j == n_kept and n_kept > 0:
                # first step after a restart: the recurrence couples q_j to every kept
                # Ritz vector (T's arrow); two full passes take all of it out
                w, c = _orthogonalise(w.to(dtype), Q[:j + 1])
                w, c2 = _orthogonalise(w, Q[:j + 1])
                diag, beta = _scalars((c[j] + c2[j]).to(f64), _norm_t(w))
                prev64 = Q[j].to(f64)
                # q_l (the last cycle's residual, fully orthogonalised) and q_{l+1}:
                # rounding level, eps sqrt(m) for the rotation's sums
                tau_prev = tau = np.full(n_kept, eps * m ** 0.5)
            else:
                # local recurrence in float64 (w - alpha q_j - beta q_{j-1} cancels most
                # of w: in float32 the remainder lost digits, residuals 15x larger at
                # D = 1e6); the Gram-Schmidt pass removes what rounding left along q_j
                # (added to alpha) and the other basis vectors. alpha stays on the device
                # until it is read together with ||w|| (one host round trip)
                q64 = Q[j].to(f64)
                alpha_t = torch.dot(q64, w)
                w.addcmul_(q64, alpha_t, value=-1)
                if j > 0:
                    w.sub_(prev64, alpha=beta_prev)
                prev64 = q64
                w = w.to(dtype)
                alpha, before = _scalars(alpha_t, _norm_t(w))
                lo = 0
                if n_kept:
                    # |y_i^T q_{j+1}| for the kept Ritz vectors, from A y_i = theta_i y_i
                    # + sigma_i q_l: grows by |theta_i - alpha| / beta a step from the
                    # rounding eps |theta_1| (Simon's omega recurrence for this basis);
                    # on the host (numpy), from host scalars
                    est = (np.abs(theta_kept - alpha) * tau + beta_prev * tau_prev
                           + sigma_kept * eps + 2 * eps * size) / max(before, 1e-300) + eps
                    if est.max() > eta or j == m - 1:
                        # (the last step's vector is the next restart's residual
                        # direction q_l, which must be orthogonal to the kept vectors)
                        est = np.full_like(est, eps)
                        kept_passes += 1
                    else:
                        lo = n_kept  # the kept Ritz vectors need no pass this step
                    tau_prev, tau = tau, est
                w, c = _orthogonalise(w, Q[lo:j + 1])
                if checks is not None and lo:  # the measured |y_i^T q_{j+1}| (tests)
                    checks.append(((Q[:n_kept] @ w).abs().max().item() / _norm_t(w).item(),
                                   float(est.max())))
                cj, beta = _scalars(c[j - lo].to(f64), _norm_t(w))
                diag = alpha + cj
                if beta < DGKS * before:
                    w, c2 = _orthogonalise(w, Q[lo:j + 1])
                    cj, beta = _scalars(c2[j - lo].to(f64), _norm_t(w))
                    diag += cj
            T[j, j] = diag
            scale = max(scale, abs(diag))
            if beta <= 1e-12 * max(scale, 1e-300) or beta == 0.0:
                # invariant subspace: continue from a fresh direction, no coupling
                Q[j + 1] = _fresh_direction(Q[:j + 1], gen)
                beta = 0.0
            else:
                Q[j + 1] = w / beta
            if j + 1 < m:
                T[j, j + 1] = T[j + 1, j] = beta
            beta_prev = beta
        theta, S = torch.linalg.eigh(T)
        theta, S = theta.flip(0), S.flip(1)
        estimates = (beta * S[m - 1, :k]).abs()
        worst = _relative_residuals(estimates, theta[:k], rel_to, tol_scale).max().item()
        if bottom:
            low = (beta * S[m - 1, m - bottom:]).abs().flip(0)
            theta_low = theta[m - bottom:].flip(0)
            order_low = theta_low.abs().argsort(descending=True)
            worst = max(worst, _relative_residuals(low[order_low], theta_low[order_low],
                                                   rel_to, tol_scale).max().item())
        if worst <= tol or restarts >= max_restarts or m >= D:
            converged = worst <= tol or m >= D
            # the Ritz vectors Y = Q^T S: rotated into Q's leading rows in place (the GEMM
            # in the basis's dtype: at D = 1e6 a float64 GEMM gave the same residuals,
            # 1.44e-7 |lambda_1|), copied out, and the basis dropped before the float64
            # (D, c) array exists: the peak is 12 c D bytes for a float32 basis, not the
            # 16 c D of the basis and the float64 vectors side by side
            cols = torch.cat([S[:, :k], S[:, m - bottom:].flip(1)], 1) if bottom else S[:, :k]
            _rotate_rows(Q, cols.to(device))
            Yt = Q[:cols.shape[1]].clone()
            del Q
            Y = _orthonormal_float64(Yt)
            del Yt
            out = LanczosResult(theta[:k].numpy().copy(), Y if not bottom else
                                Y[:, :k].contiguous(), n_products, restarts, converged,
                                worst, kept_passes, checks)
            if bottom:
                out.bottom_values = theta[m - bottom:].flip(0).numpy().copy()
                out.bottom_vectors = Y[:, k:].contiguous()
            return out
        # thick restart: the keep leading Ritz vectors, then the residual direction
        restarts += 1
        Sk = S[:, kept_idx] if bottom else S[:, :keep]
        _rotate_rows(Q, Sk.to(device))
        Q[keep] = Q[m]
        coupling = beta * Sk[m - 1]
        theta_kept = (theta[kept_idx] if bottom else theta[:keep]).numpy().copy()
        sigma_kept = coupling.abs().numpy()
        size = abs(theta_kept[0]) if not bottom else np.abs(theta_kept).max()
        T.zero_()
        T[:keep, :keep] = torch.diag(torch.from_numpy(theta_kept))
        T[:keep, keep] = coupling
        T[keep, :keep] = coupling
        start = n_kept = keep
