"""The power-law figures: X_ii against lambda_i per estimator with its fitted gamma (paper
Fig. 2, 10-12), and gamma per estimator over training (Fig. 4a)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from awch_scale.analysis.statistics import diagonal
from awch_scale.report.figures.base import (
    EQUAL_RTOL,
    LEGEND_SIZE,
    Skip,
    axis_labels,
    colours,
    curve,
    epoch_ticks,
    finish,
    grid,
    guides,
    last_epoch,
    over_epochs,
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


FAMILY_TITLES = {"covariance": "empirical (gradient noise)", "awd": "activity-weight duality",
                 "fisher": "Fisher"}
"""Panel title of each family of estimators; a family is the registry ``stage`` that
computes the estimator (an unknown stage is titled by its name)."""


def families(names) -> dict[str, list[str]]:
    """``names`` grouped by family (:data:`FAMILY_TITLES`), families and names in the
    order of :data:`GAMMA_ESTIMATORS` (unregistered names last, as their own family)."""
    out: dict[str, list[str]] = {}
    for name in [*gamma_order(names), *(n for n in names if n not in VARIABLES)]:
        stage = VARIABLES[name].stage if name in VARIABLES else name
        out.setdefault(FAMILY_TITLES.get(stage, stage), []).append(name)
    return out


def fit_line(ax, lx: np.ndarray, ly: np.ndarray, gamma: float, **style):
    """The line of slope ``gamma`` through the centre of the log10 points ``(lx, ly)``,
    drawn over their x range (``style``: ``Axes.loglog`` keywords, e.g. ``label``)."""
    c0 = np.mean(ly - gamma * lx)
    g = np.linspace(lx.min(), lx.max(), 10)
    return ax.loglog(10**g, 10 ** (c0 + gamma * g), "-", lw=1.2, **style)


def fit_points(lam: np.ndarray, x: np.ndarray, n_fit: int):
    """Masks (plottable, fitted) of one run's points: both positive and finite, and the
    fitted ones among the first ``n_fit``."""
    ok = (lam > 0) & (x > 0) & np.isfinite(x) & np.isfinite(lam)
    return ok, ok & (np.arange(len(lam)) < n_fit)


def _fitted(ax, lam: np.ndarray, x: np.ndarray, gamma: float, n_fit: int, colour,
            tag: str):
    """One run's points (grey beyond the fit range) and its fitted line, in ``colour``,
    the line labelled with ``tag`` and gamma; returns the log10 points of the fit (None
    when fewer than 3 or no finite gamma)."""
    ok, fit = fit_points(lam, x, n_fit)
    ax.loglog(lam[ok & ~fit], x[ok & ~fit], ".", color="0.6", ms=3)
    ax.loglog(lam[fit], x[fit], ".", ms=4, alpha=0.7, color=colour)
    if fit.sum() < 3 or not np.isfinite(gamma):
        return None
    lx, ly = np.log10(lam[fit]), np.log10(x[fit])
    fit_line(ax, lx, ly, gamma, color=colour, label=f"fit{tag}: gamma = {gamma:.3f}")
    return lx, ly


def _powerlaw_key(fig, runs: list, palette, n_fit: int, k: int) -> None:
    """The figure legend shared by the power-law panels: the runs' points, the points
    beyond the fit range (when ``n_fit < k``), the slope guides."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker=".", ms=8, color=palette[i], label=f"run {r}")
               for i, r in enumerate(runs)]
    if n_fit < k:
        handles.append(Line2D([], [], ls="", marker=".", ms=8, color="0.6",
                              label=f"i > {n_fit} (not fitted)"))
    handles += [Line2D([], [], ls="--", color="0.4", label="slope 1 guide"),
                Line2D([], [], ls=":", color="0.4", label="slope 2 guide")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=LEGEND_SIZE,
               frameon=False)


def draw_powerlaw(ds: xr.Dataset) -> plt.Figure:
    """log-log X_ii against lambda_i with fitted slopes and slope-1/2 guides (Fig. 2, 10-12)."""
    one = last_epoch(ds)
    names = gamma_estimators(one)
    if not names:
        raise Skip("no power-law estimator with its gamma fit in the store")
    n_fit = int(ds.attrs.get("n_fit") or one.sizes["eig"])
    fig, axes = grid(len(names))
    lam_all = np.asarray(one.hess_eigval.values, dtype=float)  # (run, eig)
    runs = [int(r) for r in one.run.values]
    palette = colours(len(runs))
    for ax, name in zip(axes, names, strict=True):
        x_all = diagonal(np.asarray(one[name].values, dtype=float))
        gammas = np.asarray(one.gamma.sel(estimator=name).values, dtype=float)
        fits = [_fitted(ax, lam_all[r], x_all[r], gammas[r], n_fit, palette[r],
                        f", run {runs[r]}" if len(runs) > 1 else "")
                for r in range(len(runs))]
        fits = [f for f in fits if f is not None]
        if fits:
            guides(ax, np.concatenate([f[0] for f in fits]),
                   np.concatenate([f[1] for f in fits]), label=False)
        std = f" ± {np.nanstd(gammas, ddof=1):.3f}" if len(gammas) > 1 else ""
        ax.set_title(f"{ESTIMATOR_LABELS.get(name, name)}\ngamma = {np.nanmean(gammas):.3f}"
                     f"{std}", fontsize=9)
        axis_labels(ax, "lambda_i", f"{name}_ii", loc="upper left",
                    legend=ax.get_legend_handles_labels()[0] != [])
    _powerlaw_key(fig, runs, palette, n_fit, one.sizes["eig"])
    finish(fig, f"X_ii against lambda_i at epoch {int(one.epoch.values)} "
                f"(fit over i <= {n_fit})")
    fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.35 / fig.get_figheight())
    return fig


def draw_gamma_epochs(ds: xr.Dataset) -> plt.Figure:
    """gamma per estimator over epochs with the [1, 2] band (Fig. 4a): one panel per family
    of estimators (:func:`families`), distinct colours within a panel, a shared y axis that
    shows gamma = 1, x ticks at the stored epochs, each legend below its panel."""
    names = gamma_estimators(ds) or [str(e) for e in ds.estimator.values]
    groups = families(names)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.4 * len(groups), 5.6), sharey=True,
                             squeeze=False)
    lows, highs = [1.0], [1.0]
    epochs = []
    for ax, (title, members) in zip(axes[0], groups.items(), strict=True):
        ax.axhspan(1, 2, color="0.88", label="1 <= gamma <= 2", zorder=0)
        drawn: list = []
        for name, colour, marker in zip(members, colours(len(members)), "osD^vP*Xph<>",
                                        strict=False):
            epochs, y = over_epochs(ds, "gamma", estimator=name)
            curve(ax, epochs, y, ESTIMATOR_LABELS.get(name, name), drawn, EQUAL_RTOL,
                  color=colour, marker=marker)
            spread = _spread(y)
            if np.isfinite(spread).any():
                lows.append(np.nanmin(spread[0]))
                highs.append(np.nanmax(spread[1]))
        epoch_ticks(ax, epochs)
        ax.set_title(title, fontsize=10)
        axis_labels(ax, "epoch", "gamma" if ax is axes[0][0] else "", loc="upper center",
                    bbox_to_anchor=(0.5, -0.14), ncol=2 if len(members) > 4 else 1)
    lo, hi = min(lows), max(highs)
    pad = max(0.1 * (hi - lo), 0.02)
    axes[0][0].set_ylim(lo - pad, hi + pad)
    return finish(fig, "power-law exponent gamma per estimator over training "
                       "(mean ± std over runs; grey: 1 <= gamma <= 2)")


def _spread(y: np.ndarray) -> np.ndarray:
    """(low, high) per epoch of mean -+ std over runs (axis 0), NaN where unfinished."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(y, axis=0)
        std = np.nanstd(y, axis=0, ddof=1) if y.shape[0] > 1 else np.zeros_like(mean)
    std = np.nan_to_num(std)
    return np.stack([mean - std, mean + std])
