"""Top-k eigenpairs of a matrix-free symmetric operator (SPEC section 2)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh
from torch import Tensor

from awch_scale.errors import ConvergenceError
from awch_scale.linalg.protocol import Operator


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
        method: the solver that ran, ``lanczos``, ``eigsh`` or ``block`` (``auto``
            resolved).
        choice: how ``method`` was chosen (:func:`solver_choice`): D, k, operator kind,
            dtype, device type, product_ratio, method, rule; JSON-ready, for provenance.
    """

    values: np.ndarray
    vectors: Tensor
    residuals: np.ndarray
    n_products: int
    seconds: float
    method: str = ""
    choice: dict = field(default_factory=dict)


def fix_signs(vectors: Tensor, rows: int = 1 << 14) -> Tensor:
    """Flip columns (in place) so that each column's entry of largest magnitude is
    positive (the first such entry at a tie); returns ``vectors``.

    The largest magnitudes are found row block by row block (no (D, k) copy of
    |vectors|; at D = 1e6, k = 50 0.08 s against 0.53 s for ``abs().argmax``)."""
    D, k = vectors.shape
    best = torch.full((k,), -1.0, dtype=vectors.dtype, device=vectors.device)
    idx = torch.zeros(k, dtype=torch.long, device=vectors.device)
    for r in range(0, D, rows):
        m, i = vectors[r:r + rows].abs().max(dim=0)
        better = m > best
        best = torch.where(better, m, best)
        idx = torch.where(better, i + r, idx)
    signs = torch.sign(vectors[idx, torch.arange(k, device=vectors.device)])
    signs[signs == 0] = 1
    return vectors.mul_(signs)


def permute_columns(vectors: Tensor, order: Tensor, rows: int = 1 << 14) -> Tensor:
    """vectors[:, order] in place, row block by row block (a (rows, k) temporary, not a
    (D, k) copy: at D = 1e8, k = 50 the copy alone would be 40 GB); returns ``vectors``."""
    for r in range(0, vectors.shape[0], rows):
        vectors[r:r + rows] = vectors[r:r + rows, order]
    return vectors


RESIDUAL_COLUMNS = 8
"""Columns per product in :func:`residuals`: its temporaries are O(8 D), not O(k D)."""


def _residual_pass(op: Operator, vectors: Tensor, values: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(lambda_i, ||A v_i - lambda_i v_i||) from products with ``RESIDUAL_COLUMNS``
    vectors at a time (one pass over the data for each group); lambda_i = ``values``,
    or the Rayleigh quotients v_i^T A v_i of orthonormal columns when None."""
    lam, r = [], []
    for j in range(0, vectors.shape[1], RESIDUAL_COLUMNS):
        Vj = vectors[:, j:j + RESIDUAL_COLUMNS]
        AV = op.matmat(Vj)
        Vj = Vj.to(AV.dtype)
        q = (torch.linalg.vecdot(Vj, AV, dim=0) if values is None else
             torch.as_tensor(values[j:j + RESIDUAL_COLUMNS], dtype=AV.dtype,
                             device=AV.device))
        lam.append(q)
        r.append(torch.linalg.vector_norm(AV.addcmul_(Vj, q, value=-1), dim=0))
        del AV
    return torch.cat(lam).cpu().numpy(), torch.cat(r).cpu().numpy()


def projected(op: Operator, vectors: Tensor, columns: int) -> Tensor:
    """V^T A V (k, k) float64, from products with ``columns`` columns of V at a time: the
    (D, k) image A V is never held whole (at D = 1e8, k = 50 it is 40 GB in float64),
    only (D, ``columns``) of it; each column of the result is that of V^T (A V)."""
    V64 = vectors.to(torch.float64)  # the same tensor when it is float64 already
    k = vectors.shape[1]
    out = torch.empty(k, k, dtype=torch.float64, device=vectors.device)
    for j in range(0, k, max(1, columns)):
        AV = op.matmat(vectors[:, j:j + columns])
        out[:, j:j + columns] = V64.T @ AV.to(torch.float64)
        del AV
    return out


def _relative(res: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Residual norms in units of |lambda_1| (SPEC 2; 1 when lambda_1 = 0)."""
    scale = abs(values[0]) if values.size and values[0] != 0 else 1.0
    return res / scale


def residuals(op: Operator, values: np.ndarray, vectors: Tensor) -> np.ndarray:
    """||A v_i - lambda_i v_i|| / |lambda_1|, from products with ``RESIDUAL_COLUMNS``
    vectors at a time (one pass over the data for each group)."""
    return _relative(_residual_pass(op, vectors, values)[1], values)


def rayleigh_residuals(op: Operator, vectors: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rayleigh quotients lambda_i = v_i^T A v_i of orthonormal float64 columns and the
    residual norms ||A v_i - lambda_i v_i|| (absolute), from the same products as
    :func:`residuals`."""
    return _residual_pass(op, vectors)


def zero_operator_error() -> ConvergenceError:
    """The error of every eigensolver when the operator maps its start vectors to zero."""
    return ConvergenceError(
        "the Hessian of the target block maps the eigensolver's start vectors to zero: its "
        "curvature vanishes, as for a dead network (every unit before or after the target "
        "switched off or saturated, e.g. after a diverging step that gradient clipping "
        "hid); check train_loss/train_acc of this checkpoint and lower train.lr")


BLOCK_FROM_K = 32
"""``method="auto"`` takes the single-vector Lanczos solver (``lanczos``) below this k; from
it on, :func:`choice_rule` decides."""

PRODUCT_RATIO = 4.5
"""``method="auto"`` (k >= BLOCK_FROM_K) takes the single-vector ``lanczos`` solver when
one single-vector product costs at most PRODUCT_RATIO times the per-vector cost of a
32-vector product (the ratio of :data:`MEASURED_RATIOS`), else the block solver. At
k = 50 the block solver needs 2.8x the products (708 against 255 at D = 1e4 and 4e4)
and spends a smaller share of its time in them, so it pays only when block products are
about 4.5x cheaper per vector; at k = 300 (1200 against 1052 products) it wins by far.
Measured (benchmarks/results/cpu-eigen-switch.md, FC 784-w-w-10, fc2, float32, one
thread; ratio, then lanczos s / block s): generic HVP D = 2500, N = 2000, k = 50: 4.13,
0.8 / 0.9; Kronecker D = 2500, N = 20,000, k = 300: 7.26, 34.2 / 8.0; D = 1e4: 4.44,
1.9 / 2.1; D = 4e4: 3.05, 5.0 / 7.0; D = 2.5e5: 1.61, 19.0 / 64.4; D = 1e6: 1.3 (ARPACK
79 s / block 408 s, benchmarks/results/cpu-issue10.md). The rule picks the faster solver
in each case (with 3.0, chosen when ARPACK was the single-vector solver, it took the
slower block solver at D = 1e4 and for the HVP)."""

MEASURED_RATIOS: dict[str, tuple[tuple[int, float], ...]] = {
    "kronecker": ((2_500, 7.26), (10_000, 4.44), (40_000, 3.05), (250_000, 1.61),
                  (1_000_000, 1.3)),
    "generic": ((2_500, 4.13),),
}
"""Single-vector product time over the per-vector time of a 32-vector product, by
operator kind (:func:`operator_kind`) and D, measured once on one CPU thread in float32
(the numbers of :data:`PRODUCT_RATIO`; ``benchmarks/bench_eigen_switch.py`` measures
them again). :func:`product_ratio` interpolates them.

Why a committed table and not a timing at run time: until issue 18, ``auto`` timed 2 + 32
products before every solve, so the same recipe and seed took ``lanczos`` on an idle
machine and ``block`` on a busy one, and the stored numbers differed (n_hvp 215 against
378, spectra values by up to 2.2e-4). The rule's inputs (D, k, the operator kind, the
dtype and the device type) are the same on every run, every rank and every resume.

Why one table for every dtype and device: the ratio falls with D because a Kronecker
product with one vector is already a matrix product (X = mat(v) is d_out x d_in), so
batching 32 vectors gains less as d_out grows; a float64 product doubles the cost of the
single and of the block product alike. No GPU measurement is committed yet, so CUDA
takes the CPU table (``benchmarks/gpu.py`` measures both solvers at D = 1e6 on the
device; ``rule`` in the recorded choice says which table was used)."""

CHOICE_RULE = (f"lanczos if k < {BLOCK_FROM_K} or product_ratio <= {PRODUCT_RATIO:g}, else "
               "block; product_ratio = MEASURED_RATIOS[operator] at D (CPU, float32, "
               "benchmarks/results/cpu-eigen-switch.md), linear in log D, held constant "
               "outside the measured range")
"""The rule of :func:`choice_rule` in words, as recorded in provenance."""


def operator_kind(op) -> str:
    """``kronecker`` for an operator with the per-sample Kronecker structure (it exposes
    ``q_rows``, as :class:`~awch_scale.model.operators.KroneckerHessianOperator` and the
    Kronecker GGN do) or a combination of such operators only; ``generic`` otherwise
    (per-sample autograd products, the second moment, a dense matrix, a combination
    with any of them)."""
    if hasattr(op, "q_rows"):
        return "kronecker"
    terms = getattr(op, "terms", ())
    if terms and all(operator_kind(term) == "kronecker" for _, term in terms):
        return "kronecker"
    return "generic"


def product_ratio(kind: str, D: int) -> float:
    """The :data:`MEASURED_RATIOS` of ``kind`` at D: linear in log D between the measured
    D, the nearest measured value outside them."""
    points = MEASURED_RATIOS[kind]
    xs = np.log([d for d, _ in points])
    return float(np.interp(np.log(D), xs, [r for _, r in points]))


def choice_rule(D: int, k: int, operator: str, dtype: str, device: str) -> dict:
    """The solver ``method="auto"`` runs, from quantities fixed by the recipe alone.

    Args:
        D: the operator's dimension.
        k: eigenpairs wanted.
        operator: :func:`operator_kind` of the operator.
        dtype: the products' dtype (``float32`` or ``float64``); recorded, the same table
            serves both (:data:`MEASURED_RATIOS`).
        device: the device type (``cpu``, ``cuda``); recorded, the CPU table serves both
            until a GPU one is committed.

    Returns:
        The inputs with ``product_ratio``, ``method`` (``lanczos`` or ``block``) and
        ``rule`` (:data:`CHOICE_RULE`): JSON-ready, for provenance.
    """
    ratio = round(product_ratio(operator, D), 4)
    method = "lanczos" if k < BLOCK_FROM_K or ratio <= PRODUCT_RATIO else "block"
    return {"D": int(D), "k": int(k), "operator": operator, "dtype": dtype,
            "device": device, "product_ratio": ratio, "method": method, "rule": CHOICE_RULE}


def solver_choice(op: Operator, k: int, method: str = "auto") -> dict:
    """:func:`choice_rule` for ``op`` (``method="auto"``), or the same inputs with the
    named ``method`` and ``rule`` ``"named"``. Nothing is timed, so every rank and
    every run with the same recipe gets the same choice."""
    dtype = getattr(op, "compute_dtype", torch.float64)
    choice = choice_rule(op.shape[0], k, operator_kind(op), str(dtype).removeprefix("torch."),
                         torch.device(op.device).type)
    if method != "auto":
        choice.update(method=method, rule="named")
    return choice


def choose_method(op: Operator, k: int) -> str:
    """The solver ``method="auto"`` runs for ``op`` and k (:func:`choice_rule`)."""
    return solver_choice(op, k)["method"]


def top_eigenpairs(
    op: Operator,
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
        method: ``lanczos`` (thick-restart Lanczos, :mod:`awch_scale.linalg.lanczos`, one
            vector per product, its basis in the operator's dtype, partial
            reorthogonalisation against the kept Ritz vectors, values from float64
            Rayleigh quotients: at D = 1e6, k = 50 the eigen stage took 36 s where ARPACK
            took 67 s), ``eigsh`` (ARPACK Lanczos through scipy, which='LA'; the
            reference the other solvers are tested against), ``block`` (thick-restart
            block Krylov, :mod:`awch_scale.linalg.krylov`, ``block`` vectors per product;
            faster for large k when one product with many vectors costs much less per
            vector than a single-vector product), or ``auto``
            (:func:`choice_rule`: ``lanczos`` for k < BLOCK_FROM_K, else ``lanczos``
            or ``block`` by the measured product ratio of the operator kind at D; no
            timing, so the same recipe gives the same solver on every run).
        tol: relative tolerance (eigsh's ``tol``, which ARPACK applies per eigenvalue,
            ||r_i|| <= tol |lambda_i|, and so does ``lanczos`` to its Ritz estimates;
            block: see ``rel_to``).
        maxiter: eigsh iterations / lanczos and block restarts allowed.
        ncv: eigsh and lanczos basis size (default 2k + 1); block: basis size before a
            restart.
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
    start, n0 = time.perf_counter(), op.n_products
    choice = solver_choice(op, k, method)
    method = choice["method"]
    if method == "block":
        vals, V = _block(op, k, tol=tol, maxiter=maxiter, basis=ncv, block=block, seed=seed,
                         rel_to=rel_to, start=guess)
    elif method == "eigsh":
        vals, V = _eigsh(op, k, tol=tol, maxiter=maxiter, ncv=ncv, seed=seed)
    elif method == "lanczos":
        V = _lanczos(op, k, tol=tol, maxiter=maxiter, ncv=ncv, seed=seed)
    else:
        raise ValueError(f"unknown eigensolver {method!r}; allowed: auto, eigsh, lanczos, "
                         "block")
    V = fix_signs(V)
    if method == "lanczos":
        # the float64 correction: Rayleigh quotients of the float64 Ritz vectors, from
        # the residual check's own products
        vals, res = rayleigh_residuals(op, V)
        order = np.argsort(-vals, kind="stable")
        if np.any(order != np.arange(k)):
            vals, res = vals[order], res[order]
            permute_columns(V, torch.from_numpy(order).to(V.device))
        res = _relative(res, vals)
    else:
        res = residuals(op, vals, V)
    if not np.any(vals) and not np.any(res):
        # A V = 0 exactly for every returned vector: the Krylov space of a random start
        # collapsed, i.e. the operator is zero. ARPACK stops with "starting vector is
        # zero"; the block solver "converges" to zeros, which would give gamma = NaN.
        raise zero_operator_error()
    return Eigenbasis(vals, V, res, op.n_products - n0, time.perf_counter() - start, method,
                      choice)


def _block(op, k, *, tol, maxiter, basis, block, seed, rel_to="first", start=None):
    from awch_scale.linalg.krylov import block_krylov_eigh

    out = block_krylov_eigh(op.matmat, op.shape[0], k, block=block, basis=basis, tol=tol,
                            max_restarts=100 if maxiter is None else maxiter, seed=seed,
                            device=op.device, rel_to=rel_to, start=start)
    if not out.converged:
        raise ConvergenceError(
            f"block Krylov did not converge: worst relative residual {out.max_residual:.2e} "
            f"> tol {tol} after {out.n_restarts} restarts (k = {k}); raise "
            "analysis.eigen.maxiter or ncv, loosen tol, or lower k"
        )
    return out.values, out.vectors


def _lanczos(op, k, *, tol, maxiter, ncv, seed):
    from awch_scale.linalg.lanczos import thick_restart_lanczos

    dtype = getattr(op, "compute_dtype", torch.float64)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float64
    out = thick_restart_lanczos(op.matmat, op.shape[0], k, basis=ncv, tol=tol,
                                max_restarts=maxiter, seed=seed, dtype=dtype,
                                device=op.device, rel_to="self")
    if not out.converged:
        raise ConvergenceError(
            f"Lanczos did not converge: worst Ritz estimate {out.max_residual:.2e} |lambda_i| "
            f"> tol {tol} after {out.n_restarts} restarts (k = {k}); raise "
            "analysis.eigen.maxiter or ncv, loosen tol, or lower k"
        )
    return out.vectors


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
    vecs = np.ascontiguousarray(vecs[:, order])  # ARPACK's (D, k) array is freed here
    return vals, torch.from_numpy(vecs).to(op.device)
