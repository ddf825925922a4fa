"""Power-law fit C_ii ~ lambda_i^gamma (SPEC section 6), over resolved points only.

:func:`fit_power_law` is the bare fit (``scipy.stats.linregress`` of log10 X_ii on
log10 lambda_i where both are positive). :func:`fit_resolved` is what the analysis
stores: it first keeps only the points the numbers can support (:class:`Accuracy`),

- the eigenvalues: the leading run of lambda_1, lambda_2, ... that are each above the
  eigensolver's accuracy and the dtype's underflow floor (:func:`resolved_eigenvalues`);
  an eigenvalue at or below its residual bound is indistinguishable from 0 (a Ritz value
  with residual r lies within r of an eigenvalue of H, not closer), so its logarithm is
  noise;
- the diagonals: X_ii finite, positive and above the underflow / rounding floor
  (:func:`resolved_diagonal`),

and records how many points were used (``gamma_n``) and why fewer than ``n_fit``
(:attr:`GammaFit.reason`, stored in the provenance as ``gamma_fit``). A fit needs at
least :data:`MIN_POINTS` points; with fewer its gamma is NaN, never a line through noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import linregress

MIN_POINTS = 3
"""Points a gamma fit needs: a line through 2 points has no standard error (linregress
divides by n - 2), so ``gamma_stderr`` and the fit's quality would be undefined."""


@dataclass(frozen=True)
class PowerLawFit:
    """Least-squares slope of log10 X_ii on log10 lambda_i.

    Attributes:
        gamma: slope; NaN when fewer than :data:`MIN_POINTS` usable points.
        stderr: standard error of the slope.
        r2: squared Pearson correlation of the log-log points.
        n: number of points used (both values positive among the first n_fit).
    """

    gamma: float
    stderr: float
    r2: float
    n: int


def fit_power_law(x_diag: np.ndarray, eigvals: np.ndarray, n_fit: int) -> PowerLawFit:
    """Fit log10 x_ii = gamma * log10 lambda_i + c over i = 1..n_fit where both are > 0.

    As ``scipy.stats.linregress`` on the log10 values (the reference code's fit). No
    accuracy screen: :func:`fit_resolved` applies one first.
    """
    x = np.asarray(x_diag, dtype=np.float64)[:n_fit]
    lam = np.asarray(eigvals, dtype=np.float64)[:n_fit]
    ok = (x > 0) & (lam > 0) & np.isfinite(x) & np.isfinite(lam)
    n = int(ok.sum())
    if n < MIN_POINTS:
        return PowerLawFit(np.nan, np.nan, np.nan, n)
    lx, ll = np.log10(lam[ok]), np.log10(x[ok])
    if np.ptp(lx) == 0:
        return PowerLawFit(np.nan, np.nan, np.nan, n)
    fit = linregress(lx, ll)
    return PowerLawFit(float(fit.slope), float(fit.stderr), float(fit.rvalue**2), n)


# ----------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Accuracy:
    """What the eigensolver and the products' dtype can resolve (one analysis).

    Attributes:
        residuals: ``hess_residual``, ||H v_i - lambda_i v_i|| / |lambda_1| (k,).
        tol: the eigensolver's tolerance ``analysis.eigen.tol`` (relative to |lambda_1|).
        eps: machine epsilon of the products' dtype.
        tiny: smallest normal number of that dtype.
        dtype: the dtype's name (for messages).
    """

    residuals: np.ndarray
    tol: float
    eps: float
    tiny: float
    dtype: str

    @staticmethod
    def of(residuals, tol: float, dtype) -> Accuracy:
        """The accuracy of an eigenbasis with ``residuals`` from a solver asked for ``tol``,
        its products in ``dtype`` (a NumPy or torch dtype, or its name)."""
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:  # a torch dtype: torch.float32 -> float32
            np_dtype = np.dtype(str(dtype).removeprefix("torch."))
        info = np.finfo(np_dtype)
        return Accuracy(np.asarray(residuals, dtype=np.float64), float(tol),
                        float(info.eps), float(info.tiny), np_dtype.name)

    @property
    def underflow(self) -> float:
        """tiny / eps: below it a number of this dtype, or the products it was formed
        from (entries of H v_i are ~ lambda_i / sqrt(D), sums of squares of projections
        ~ sqrt(X_ii)), came near or into the subnormal range, where relative precision is
        lost; the factor 1/eps keeps them normal for any D < 1/eps^2 with room to spare.
        float32: 9.9e-32; float64: 1.0e-292."""
        return self.tiny / self.eps


def eigen_thresholds(eigvals: np.ndarray, accuracy: Accuracy) -> np.ndarray:
    """What lambda_i must exceed to be resolved:
    max(hess_residual_i, tol, eps) |lambda_1|, and at least :attr:`Accuracy.underflow`.

    The residual is an a-posteriori bound (some eigenvalue of H lies within
    ||H v_i - lambda_i v_i|| of lambda_i); ``tol`` is the accuracy the solver was asked
    for, which a lucky final product does not improve on; eps |lambda_1| is the rounding
    of one product in the working dtype. A NaN residual gives a NaN threshold (never
    resolved)."""
    lam = np.asarray(eigvals, dtype=np.float64)
    scale = abs(lam[0]) if lam.size and np.isfinite(lam[0]) else np.nan
    res = accuracy.residuals[:lam.size]
    rel = np.maximum(res, max(accuracy.tol, accuracy.eps))
    return np.maximum(rel * scale, accuracy.underflow)


def resolved_eigenvalues(eigvals: np.ndarray, accuracy: Accuracy, n_fit: int) -> int:
    """Length of the leading run of resolved eigenvalues among the first ``n_fit``:
    lambda_i finite, positive and above :func:`eigen_thresholds`. A run, because the
    eigenvalues are sorted: one below the accuracy ends the range the fit may use."""
    lam = np.asarray(eigvals, dtype=np.float64)[:n_fit]
    ok = np.isfinite(lam) & (lam > eigen_thresholds(lam, accuracy))
    return int(np.argmin(ok)) if not ok.all() else int(lam.size)


def diagonal_floor(x_diag: np.ndarray, accuracy: Accuracy) -> float:
    """What X_ii must exceed: max(:attr:`Accuracy.underflow`, eps^2 max_j |X_jj|).

    The underflow term catches diagonals formed from products at the edge of underflow
    (a first layer at 1e-9 of its scale in float32 gives resolved eigenvalues ~ 1e-19 but
    h2 ~ 1e-37 and AWD terms ~ 1e-39, stored as float32 subnormals or 0).
    The relative term is where rounding alone reaches 100%: every X_ii is a mean of
    squared projections v_i . y (per-sample gradients, h_p v_i, J_p v_i, ...) whose
    rounding in the working dtype is ~ eps ||y||, so X_ii carries an absolute error
    ~ eps sqrt(X_ii max_j X_jj) and means nothing below eps^2 max_j X_jj. A diagonal
    ~ lambda_i^gamma with lambda_i resolved (> tol |lambda_1| = 1e-6 |lambda_1| by default)
    and gamma <= 2 stays above 1e-12 of the largest, above this floor (float32: 1.4e-14 of
    the largest; float64: 4.9e-32), so the floor removes no point the eigenvalues allow."""
    x = np.asarray(x_diag, dtype=np.float64)
    finite = x[np.isfinite(x)]
    top = float(np.abs(finite).max()) if finite.size else 0.0
    return max(accuracy.underflow, accuracy.eps**2 * top)


def resolved_diagonal(x_diag: np.ndarray, accuracy: Accuracy) -> np.ndarray:
    """Mask of resolved X_ii: finite, positive and above :func:`diagonal_floor`."""
    x = np.asarray(x_diag, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & (x > diagonal_floor(x, accuracy))


@dataclass(frozen=True)
class GammaFit:
    """One estimator's gamma over its resolved points.

    Attributes:
        fit: the power-law fit (``fit.n`` points: ``gamma_n``).
        reason: why fewer than ``n_fit`` points were used, or why gamma is NaN (None when
            every point was used and the fit is finite).
    """

    fit: PowerLawFit
    reason: str | None

    def provenance(self) -> dict[str, object]:
        """The JSON entry of ``provenance["gamma_fit"]``: ``{"n": ..., "reason": ...}``."""
        return {"n": int(self.fit.n), "reason": self.reason}


def _eigen_cut(lam: np.ndarray, accuracy: Accuracy, n_lam: int, n_fit: int) -> str:
    """Why the eigenvalue range ends at n_lam < n_fit (the first unresolved one)."""
    value = lam[n_lam]
    thr = eigen_thresholds(lam, accuracy)[n_lam]
    if not np.isfinite(value):
        why = "not finite"
    elif not np.isfinite(thr):
        why = "without a finite residual"
    elif value <= 0:
        why = "not positive"
    elif thr == accuracy.underflow:
        why = f"below the {accuracy.dtype} underflow floor {thr:.1e}"
    else:
        why = (f"below the eigensolver's accuracy max(hess_residual_i, eigen.tol, eps) "
               f"|lambda_1| = {thr:.1e}")
    used = f"fit over i <= {n_lam} of n_fit = {n_fit}" if n_lam else "no eigenvalue resolved"
    return f"lambda_{n_lam + 1} = {value:.2e} is {why}: {used}"


def fit_resolved(x_diag: np.ndarray, eigvals: np.ndarray, n_fit: int,
                 accuracy: Accuracy) -> GammaFit:
    """gamma of X_ii ~ lambda_i^gamma over the resolved points among i = 1..n_fit.

    The range is the leading run of resolved eigenvalues (:func:`resolved_eigenvalues`);
    inside it, unresolved X_ii (:func:`resolved_diagonal`) are left out, as the SPEC's
    non-positive ones always were. Fewer than :data:`MIN_POINTS` points: gamma NaN.

    Args:
        x_diag: X_ii (k,).
        eigvals: lambda_i (k,), descending.
        n_fit: leading directions the settings allow.
        accuracy: what the eigenbasis and dtype resolve.

    Returns:
        The fit and the reason for every point left out (None if none was).
    """
    lam = np.asarray(eigvals, dtype=np.float64)[:n_fit]
    x = np.asarray(x_diag, dtype=np.float64)[:n_fit]
    n_fit = lam.size
    n_lam = resolved_eigenvalues(lam, accuracy, n_fit)
    reasons = [_eigen_cut(lam, accuracy, n_lam, n_fit)] if n_lam < n_fit else []
    ok = resolved_diagonal(x, accuracy)[:n_lam]
    if not ok.all():
        bad = np.flatnonzero(~ok) + 1
        listed = ", ".join(map(str, bad[:8])) + (", ..." if bad.size > 8 else "")
        reasons.append(f"X_ii of i = {listed} left out ({bad.size} of {n_lam}: not finite, "
                       f"not positive or <= {diagonal_floor(x, accuracy):.1e}, the "
                       f"{accuracy.dtype} underflow / rounding floor)")
    fit = fit_power_law(np.where(ok, x[:n_lam], np.nan), lam[:n_lam], n_lam)
    if fit.n < MIN_POINTS:
        reasons.append(f"{fit.n} resolved point(s), fewer than the {MIN_POINTS} a fit "
                       "needs: gamma is NaN")
    elif not np.isfinite(fit.gamma):
        reasons.append("the resolved eigenvalues are all equal: no slope, gamma is NaN")
    return GammaFit(fit, "; ".join(reasons) or None)


def gamma_variables(diagonals: dict[str, np.ndarray], eigvals: np.ndarray,
                    n_fit: int, accuracy: Accuracy | None = None) -> dict[str, tuple]:
    """``gamma``, ``gamma_stderr``, ``gamma_r2``, ``gamma_n`` along ``estimator``.

    Args:
        diagonals: estimator name -> X_ii (k,), in the order the ``estimator`` dim takes.
        eigvals: lambda_i (k,).
        n_fit: leading directions in each fit.
        accuracy: fit only resolved points (:func:`fit_resolved`); None: the bare
            :func:`fit_power_law` of every positive pair (the library's ``awd_analysis``,
            which has no residuals).

    Returns:
        Data variables for ``xarray.Dataset`` (pair them with the coordinate
        ``estimator = list(diagonals)``).
    """
    if accuracy is None:
        fits = [fit_power_law(d, eigvals, n_fit) for d in diagonals.values()]
    else:
        fits = [g.fit for g in gamma_fits(diagonals, eigvals, n_fit, accuracy).values()]
    return fit_variables(fits)


def gamma_fits(diagonals: dict[str, np.ndarray], eigvals: np.ndarray, n_fit: int,
               accuracy: Accuracy) -> dict[str, GammaFit]:
    """:func:`fit_resolved` of every estimator, by name (the order of ``diagonals``)."""
    return {name: fit_resolved(d, eigvals, n_fit, accuracy) for name, d in diagonals.items()}


def fit_variables(fits: list[PowerLawFit]) -> dict[str, tuple]:
    """The four ``estimator`` variables of a list of fits (in ``estimator`` order)."""
    return {
        "gamma": ("estimator", np.array([f.gamma for f in fits], dtype=np.float64)),
        "gamma_stderr": ("estimator", np.array([f.stderr for f in fits], dtype=np.float64)),
        "gamma_r2": ("estimator", np.array([f.r2 for f in fits], dtype=np.float64)),
        "gamma_n": ("estimator", np.array([f.n for f in fits], dtype=np.int64)),
    }
