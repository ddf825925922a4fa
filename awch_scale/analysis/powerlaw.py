"""Power-law fit C_ii ~ lambda_i^gamma (SPEC section 6)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import linregress


@dataclass(frozen=True)
class PowerLawFit:
    """Least-squares slope of log10 X_ii on log10 lambda_i.

    Attributes:
        gamma: slope; NaN when fewer than 3 usable points.
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

    As ``scipy.stats.linregress`` on the log10 values (the reference code's fit).
    """
    x = np.asarray(x_diag, dtype=np.float64)[:n_fit]
    lam = np.asarray(eigvals, dtype=np.float64)[:n_fit]
    ok = (x > 0) & (lam > 0) & np.isfinite(x) & np.isfinite(lam)
    n = int(ok.sum())
    if n < 3:
        return PowerLawFit(np.nan, np.nan, np.nan, n)
    lx, ll = np.log10(lam[ok]), np.log10(x[ok])
    if np.ptp(lx) == 0:
        return PowerLawFit(np.nan, np.nan, np.nan, n)
    fit = linregress(lx, ll)
    return PowerLawFit(float(fit.slope), float(fit.stderr), float(fit.rvalue**2), n)


def gamma_variables(diagonals: dict[str, np.ndarray], eigvals: np.ndarray,
                    n_fit: int) -> dict[str, tuple]:
    """``gamma``, ``gamma_stderr``, ``gamma_r2``, ``gamma_n`` along ``estimator``.

    Args:
        diagonals: estimator name -> X_ii (k,), in the order the ``estimator`` dim takes.
        eigvals: lambda_i (k,).
        n_fit: leading directions in each fit.

    Returns:
        Data variables for ``xarray.Dataset`` (pair them with the coordinate
        ``estimator = list(diagonals)``).
    """
    fits = [fit_power_law(d, eigvals, n_fit) for d in diagonals.values()]
    return {
        "gamma": ("estimator", np.array([f.gamma for f in fits])),
        "gamma_stderr": ("estimator", np.array([f.stderr for f in fits])),
        "gamma_r2": ("estimator", np.array([f.r2 for f in fits])),
        "gamma_n": ("estimator", np.array([f.n for f in fits], dtype=np.int64)),
    }
