"""The power-law figures: X_ii against lambda_i per estimator with its fitted gamma (paper
Fig. 2, 10-12), and gamma per estimator over training (Fig. 4a)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from awch_scale.analysis.statistics import diagonal
from awch_scale.report.figures.base import (
    Skip,
    axis_labels,
    band,
    finish,
    grid,
    guides,
    last_epoch,
    over_epochs,
    single,
)
from awch_scale.variables import GAMMA_ESTIMATORS, VARIABLES, gamma_order

SYMBOLS = {
    "covar": "C", "covar_mb": "C minibatch", "covar_within": "C within-class",
    "c_pair": "C pair", "c_awd_raw": "C^AWD", "c_hh": "C^hh", "c_hh_sd": "C^hh same-sample",
    "c_hh_sd_wd": "C^hh s.-s. diag. w", "c_li": "C Thm 3.4", "h2": "E_p[h_p^2]",
    "fisher": "Fisher",
}
"""Short symbol of each power-law estimator (SPEC 6) for panel titles and legends."""
assert set(SYMBOLS) == set(GAMMA_ESTIMATORS)

ESTIMATOR_LABELS = {
    name: f"{SYMBOLS[name]} ({VARIABLES[name].role})" if VARIABLES[name].role else SYMBOLS[name]
    for name in GAMMA_ESTIMATORS}
"""Panel titles of the power-law estimators: the symbol, and the paper's name of its gamma
where the registry gives it a role (``C (gamma_emp)``)."""


def gamma_estimators(ds: xr.Dataset) -> list[str]:
    """Estimators that have a gamma fit and their X_ii in the store, in SPEC 6 order."""
    if "gamma" not in ds or "estimator" not in ds.coords:
        return []
    return gamma_order(str(e) for e in ds.estimator.values if str(e) in ds)


def _fitted(ax, lam: np.ndarray, x: np.ndarray, gamma: float, n_fit: int, tag: str | None):
    """One run's points (grey beyond the fit range) and its fitted line; returns the
    log10 points of the fit (None when fewer than 3 or no finite gamma)."""
    ok = (lam > 0) & (x > 0) & np.isfinite(x)
    fit = ok & (np.arange(len(lam)) < n_fit)
    ax.loglog(lam[ok & ~fit], x[ok & ~fit], ".", color="0.6", ms=3)
    ax.loglog(lam[fit], x[fit], ".", ms=4, alpha=0.7, label=tag)
    if fit.sum() < 3 or not np.isfinite(gamma):
        return None
    lx, ly = np.log10(lam[fit]), np.log10(x[fit])
    c0 = np.mean(ly - gamma * lx)
    g = np.linspace(lx.min(), lx.max(), 10)
    ax.loglog(10**g, 10 ** (c0 + gamma * g), "-", color="k", lw=1)
    return lx, ly


def draw_powerlaw(ds: xr.Dataset) -> plt.Figure:
    """log-log X_ii against lambda_i with fitted slopes and slope-1/2 guides (Fig. 2, 10-12)."""
    one = last_epoch(ds)
    names = gamma_estimators(one)
    if not names:
        raise Skip("no power-law estimator with its gamma fit in the store")
    n_fit = int(ds.attrs.get("n_fit") or one.sizes["eig"])
    fig, axes = grid(len(names))
    lam_all = np.asarray(one.hess_eigval.values, dtype=float)  # (run, eig)
    runs = lam_all.shape[0]
    for ax, name in zip(axes, names, strict=True):
        x_all = diagonal(np.asarray(one[name].values, dtype=float))
        gammas = np.asarray(one.gamma.sel(estimator=name).values, dtype=float)
        fits = [_fitted(ax, lam_all[r], x_all[r], gammas[r], n_fit,
                        f"run {int(one.run.values[r])}" if runs > 1 else None)
                for r in range(runs)]
        fits = [f for f in fits if f is not None]
        if fits:
            guides(ax, np.concatenate([f[0] for f in fits]),
                   np.concatenate([f[1] for f in fits]))
        std = f" ± {np.nanstd(gammas, ddof=1):.3f}" if len(gammas) > 1 else ""
        ax.set_title(f"{ESTIMATOR_LABELS.get(name, name)}\ngamma = {np.nanmean(gammas):.3f}"
                     f"{std}", fontsize=9)
        axis_labels(ax, "lambda_i", f"{name}_ii", legend=6)
    return finish(fig, f"X_ii against lambda_i at epoch {int(one.epoch.values)} "
                       f"(fit over i <= {n_fit}, solid line: fitted slope)")


def draw_gamma_epochs(ds: xr.Dataset) -> plt.Figure:
    """gamma per estimator over epochs with the [1, 2] band (Fig. 4a)."""
    names = gamma_estimators(ds) or [str(e) for e in ds.estimator.values]
    fig, ax = single()
    ax.axhspan(1, 2, color="0.85", label="1 <= gamma <= 2")
    for name in names:
        epochs, y = over_epochs(ds, "gamma", estimator=name)
        band(ax, epochs, y, label=ESTIMATOR_LABELS.get(name, name))
    axis_labels(ax, "epoch", "gamma", ncol=2)
    return finish(fig, "power-law exponent per estimator over training")
