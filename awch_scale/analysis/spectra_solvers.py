"""The eigenvalue problems of the spectra stage (SPEC 6), each solved to a stated accuracy
or flagged.

Every stored eigenvalue of M, C and H_p = M - H is within ``tol`` times its operator's
spectral scale (|lambda_1(H)| for H_p, lambda_1 of M or C for those) of the true one, or
NaN with the reason (``TopSpectrum.note``, stored in provenance). Three routes, chosen
by :func:`choose_route` from quantities the recipe fixes (no timing, so the same recipe
takes the same route on every run):

- ``dense`` (D <= ``dense_max``): H and M are formed column block by column block (2 D
  products, float64 on the operator's device), C = (M - g g^T)/B and H_p = M - H from
  them, and every spectrum by ``torch.linalg.eigh``: exact to rounding whatever the
  multiplicities. This is the route for a top of H_p that is a cluster larger than r
  (a trained ReLU network's common null space of M and H): a Krylov solver sees one
  direction of such an eigenspace per start vector and missed eigenvalues silently
  (issue 17: a tiny lmse MLP, D = 30, stored hp_eigval_top 2.5e-3 |lambda_1(H)| off).
  Measured (one thread, loaded 2-core machine): eigh of 2000 x 2000 5.9 s, 4000 x 4000
  34 s; at D = 1024 the route took 2.1 s where the Krylov route took 0.75 s
  (:data:`DENSE_MAX`).
- ``gram`` (M and C, N^2 <= D r, per-sample gradients structured or cached): M = (1/N)
  G^T G and K = (1/N) G G^T (N x N) share their nonzero eigenvalues, and C = (1/(N B))
  G^T P G (P the centring projector) shares them with P K P / B. For a Linear target
  K = (Delta Delta^T) o (A A^T) / N costs O(N^2 (d_out + d_in)); the cosines with H's
  V_r come from G V_r (the covariance stage's projections), not from D-vectors. Exact,
  and all of M's spectrum (its density without SLQ). At D = 1e6, N = 1200: 1.2 s for
  K and its eigh against 0.1 s per single-vector product of M.
- ``krylov``: thick-restart Lanczos (:mod:`awch_scale.linalg.lanczos`) on the operator's
  device with an absolute tolerance tol * scale; the Rayleigh quotients and residuals of
  the returned float64 vectors are recomputed, and a value whose residual exceeds
  tol * scale is NaN (|theta - lambda| <= ||r|| for some eigenvalue lambda). A
  single-vector solver sees one direction of a repeated eigenvalue, so every result is
  checked by a short Lanczos run on the complement of the vectors found; a missed
  eigenvalue sends the solve to the block solver with a block of at least r, and what is
  still missed is NaN (:mod:`awch_scale.analysis.spectra_krylov`). Both ends of H_p come
  from one Lanczos run. Measured at D = 1e6 (top 10 of H_p, loaded machine):
  the block solver with a block of 10 took 173 s, Lanczos 17 s (a block product costs
  what its single products cost at that D, and the block solver's polynomial degree
  grows by one per block), so the block solver runs only when the check asks for it.

For H_p with a Kronecker Hessian, two exact facts come first: the common null space of M
and H that dead units give (:func:`live_coordinates`) is removed before the solves and
its eigenvalue 0 merged back with its multiplicity (:func:`with_zeros`), and ranks of
the top that :mod:`awch_scale.analysis.hp_bounds` certifies to be 0 are not solved for.

``eigsh`` (ARPACK through scipy) stays available as the tests' reference, never a
default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from awch_scale.errors import ConvergenceError
from awch_scale.linalg.eigen import top_eigenpairs

DENSE_MAX = 512
"""Default largest D of the ``dense`` route. Measured on the quickstart's D = 1024 block
(N = 1200, r = 5, one thread): dense 2.07 s (2048 products, three eigh), Krylov 0.75 s,
the same values to 5e-8 of their scales (the eigen stage: 0.21 s); below D ~ 500 the
dense route costs a fraction of a second and is exact whatever the multiplicities."""

ROUTES = ("auto", "dense", "gram", "krylov", "eigsh")
"""Values of ``analysis.spectra.method``: ``auto`` (:func:`choose_route`) or one route
(``gram``: M and C from the Gram matrix, H_p by Krylov)."""


@dataclass
class TopSpectrum:
    """The r algebraically largest eigenvalues of one operator.

    Attributes:
        values: (r,) descending; NaN where not within the accuracy (see ``note``).
        overlap: V_r^T U_r (r, r), the Hessian's top-r eigenvectors against this
            operator's (for the principal cosines), or None when not asked for.
        spectrum: every eigenvalue when known (dense and gram routes; zeros beyond
            those given), else None.
        note: why some values are NaN, or None.
        route: the route that ran.
    """

    values: np.ndarray
    overlap: Tensor | None = None
    spectrum: np.ndarray | None = None
    note: str | None = None
    route: str = ""


def choose_route(D: int, N: int, r: int, *, method: str = "auto", dense_max: int = DENSE_MAX,
                 gram: bool = True) -> dict[str, str]:
    """The route of each eigenvalue problem: ``{"m": ..., "c": ..., "hp": ...}``.

    ``auto``: ``dense`` for every problem when D <= ``dense_max``; else ``gram`` for M
    and C when ``gram`` (the per-sample gradients are structured or cached, one process)
    and N^2 <= D r (the N x N eigh then costs about what r Krylov products of M cost),
    else ``krylov``; H_p is ``krylov``. ``gram``: M and C from the Gram matrix (Krylov
    when it is not available), H_p by Krylov. Another named route applies to all three
    (``dense`` beyond ``dense_max`` is refused by the caller's memory check, not here).
    """
    if method not in ROUTES:
        raise ValueError(f"unknown spectra method {method!r}; allowed: {', '.join(ROUTES)}")
    if method == "gram":
        mc = "gram" if gram else "krylov"
        return {"m": mc, "c": mc, "hp": "krylov"}
    if method != "auto":
        return {"m": method, "c": method, "hp": method}
    if D <= dense_max:
        return {"m": "dense", "c": "dense", "hp": "dense"}
    mc = "gram" if gram and N * N <= D * r else "krylov"
    return {"m": mc, "c": mc, "hp": "krylov"}


def dense_matrix(op, block: int = 256) -> Tensor:
    """The operator as a symmetrised (D, D) float64 matrix on its device, from products
    with ``block`` columns of the identity at a time (D products in all)."""
    D = op.shape[0]
    out = torch.empty(D, D, dtype=torch.float64, device=op.device)
    for j in range(0, D, block):
        c = min(block, D - j)
        E = torch.zeros(D, c, dtype=torch.float64, device=op.device)
        idx = torch.arange(c, device=op.device)
        E[idx + j, idx] = 1.0
        out[:, j:j + block] = op.matmat(E)
    return 0.5 * (out + out.T)


class DenseOperator:
    """A (D, D) matrix behind the operator protocol (``shape``, ``device``, ``matmat``,
    ``n_products``), for the stochastic estimators on the dense route."""

    def __init__(self, A: Tensor):
        self.A = A
        self.n_products = 0

    @property
    def shape(self) -> tuple[int, int]:
        """(D, D)."""
        return tuple(self.A.shape)

    @property
    def device(self) -> torch.device:
        """The matrix's device."""
        return self.A.device

    def matmat(self, V: Tensor) -> Tensor:
        """A V in float64."""
        V = torch.as_tensor(V, device=self.device).to(torch.float64)
        self.n_products += V.shape[1] if V.ndim == 2 else 1
        return self.A @ V


def live_coordinates(hess, deltas: Tensor) -> Tensor | None:
    """The coordinates of w = vec(W) (row-major, o * d_in + j) outside the exact common
    null space of M and H of a Kronecker Hessian (its cached Q_i or factors), or None
    when there is none or the cache cannot tell.

    A target input j that is 0 for every sample (a dead unit before the target) and a
    target output o that no loss depends on (delta_io = 0 and row o of every Q_i zero,
    e.g. a dead ReLU unit after it) make every e_o (x) e_j an exact null vector of M, H,
    C and H_p: the products are exactly 0 there. A trained ReLU network's top of H_p is
    often this space, of multiplicity far above r; removing it leaves the Krylov solvers
    the well-posed part (its eigenvalue 0 is known exactly, with its multiplicity).
    """
    q_form = getattr(hess, "q_form", None)
    if q_form not in ("factor", "full"):
        return None
    lay, p = hess.layer, hess.problem
    used_in = torch.zeros(lay.d_in, dtype=torch.float64, device=hess.device)
    used_out = torch.zeros(lay.d_out, dtype=torch.float64, device=hess.device)
    for chunk in hess.world.shard(p.slices()):
        used_in += (lay.A[chunk] != 0).any(0)
        used_out += (deltas[chunk] != 0).any(0)
        q = hess._q[chunk.start]
        used_out += ((q[0] != 0).any(1).any(0) if q_form == "factor"
                     else (q != 0).any(2).any(0))
    hess.world.all_reduce(used_in)
    hess.world.all_reduce(used_out)
    live = torch.outer(used_out > 0, used_in > 0).reshape(-1).nonzero()[:, 0]
    return None if len(live) == p.D else live


class Restricted:
    """An operator restricted to the coordinates ``live`` (R^T A R, R the selection), for
    an operator that vanishes on the others (:func:`live_coordinates`)."""

    def __init__(self, op, live: Tensor):
        self.op, self.live = op, live
        self.n_products = 0

    @property
    def shape(self) -> tuple[int, int]:
        """(D', D'), D' = len(live)."""
        return (len(self.live), len(self.live))

    @property
    def device(self) -> torch.device:
        """The operator's device."""
        return self.op.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The operator's compute dtype."""
        return self.op.compute_dtype

    def matmat(self, V: Tensor) -> Tensor:
        """(A R V)[live] for V (D', m) or (D',)."""
        V = torch.as_tensor(V, device=self.device)
        vec = V.ndim == 1
        V = V[:, None] if vec else V
        full = torch.zeros(self.op.shape[0], V.shape[1], dtype=V.dtype, device=self.device)
        full[self.live] = V
        out = self.op.matmat(full)[self.live]
        self.n_products += V.shape[1]
        return out[:, 0] if vec else out


def with_zeros(top: TopSpectrum, zeros: int, r: int) -> TopSpectrum:
    """Top-r of an operator whose spectrum is ``top``'s (on the live coordinates) and
    ``zeros`` exact zeros: the merged r largest. Below a NaN of ``top`` the order is
    unknown, so only merged values at or above the last value before it are kept."""
    vals = np.asarray(top.values, dtype=float)
    known = vals[:int(np.argmax(np.isnan(vals)))] if np.isnan(vals).any() else vals
    merged = np.sort(np.concatenate([known, np.zeros(zeros)]))[::-1][:r]
    if len(known) < len(vals):  # NaNs: keep what is certainly above them
        floor = known[-1] if len(known) else np.inf
        merged = np.where(merged >= floor, merged, np.nan)
    merged = np.concatenate([merged, np.full(r - len(merged), np.nan)])
    return TopSpectrum(merged, None, None, top.note,
                       f"{top.route} on the live coordinates + {zeros} exact zeros")


def _overlap(V_r: Tensor | None, U: Tensor) -> Tensor | None:
    return None if V_r is None else V_r.to(torch.float64).T @ U.to(V_r.device, torch.float64)


def dense_top(A: Tensor, r: int, V_r: Tensor | None = None) -> TopSpectrum:
    """Top-r of a dense symmetric matrix by ``eigh`` (``eigvalsh`` when no overlap is
    needed)."""
    if V_r is None:
        lam = torch.linalg.eigvalsh(A).flip(0)
        return TopSpectrum(lam[:r].cpu().numpy(), None, lam.cpu().numpy(), route="dense")
    lam, U = torch.linalg.eigh(A)
    lam, U = lam.flip(0), U.flip(1)
    return TopSpectrum(lam[:r].cpu().numpy(), _overlap(V_r, U[:, :r]), lam.cpu().numpy(),
                       route="dense")


def gram_top(K: Tensor, r: int, P: Tensor | None, scale_n: float) -> TopSpectrum:
    """Top-r of M (or C) from the Gram matrix K (N x N) of rows whose squares sum to it.

    With K = F F^T / ``scale_n`` (F the N x D rows, here G or P G), an eigenpair (w,
    lambda) of K gives M's u = F^T w / sqrt(scale_n lambda); ``P`` = F V_r (N, r) gives
    V_r^T u = P^T w / sqrt(scale_n lambda). Columns of eigenvalues at rounding level
    (rank-deficient K: their u are any null vectors) get a zero overlap.
    """
    lam, W = torch.linalg.eigh(K)
    lam, W = lam.flip(0), W.flip(1)
    overlap = None
    if P is not None:
        top = lam[:r]
        good = top > 1e-12 * max(float(lam[0]), 1e-300)
        norm = torch.sqrt(scale_n * torch.where(good, top, torch.ones_like(top)))
        overlap = (P.T.to(W) @ W[:, :r]) / norm * good
    values = lam[:r].cpu().numpy()
    if len(values) < r:
        values = np.append(values, np.zeros(r - len(values)))
    return TopSpectrum(values, overlap, np.clip(lam.cpu().numpy(), 0.0, None), route="gram")


def eigsh_top(op, r: int, *, tol: float, seed: int, shift: float = 0.0,
              V_r: Tensor | None = None) -> TopSpectrum:
    """Top-r by ARPACK (``eigsh``, the tests' reference) on ``op`` (+ ``shift`` I, the
    values returned unshifted); NaN with the reason when it does not converge."""
    from awch_scale.model.operators import IdentityOperator

    shifted = op + shift * IdentityOperator(op.problem) if shift else op
    try:
        b = top_eigenpairs(shifted, r, method="eigsh", tol=tol, seed=seed)
    except ConvergenceError as err:
        return TopSpectrum(np.full(r, np.nan), None, None, str(err), "eigsh")
    return TopSpectrum(b.values - shift, _overlap(V_r, b.vectors), None, None, "eigsh")
