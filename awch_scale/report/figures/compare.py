"""Figures that overlay several stores (``awch-scale report A.zarr B.zarr``): gamma over
epochs and the power law X_ii ~ lambda_i^gamma, one panel per named gamma, one colour per
store (CE against MSE as in the paper's Fig. 2).

A *series* is ``(label, dataset)``: one store, or one target layer of a store."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.lines import Line2D

from awch_scale.analysis.statistics import diagonal
from awch_scale.report.figures import base
from awch_scale.report.figures.gamma import ESTIMATOR_LABELS, fit_line, fit_points
from awch_scale.variables import GAMMA_ROLES

Series = tuple[str, xr.Dataset]


def shared_estimators(series: list[Series], estimators=None) -> list[str]:
    """The estimators drawn: ``estimators`` (default: the paper's named gammas,
    :data:`GAMMA_ROLES`) that at least one series has a gamma fit for."""
    wanted = list(GAMMA_ROLES.values()) if estimators is None else list(estimators)
    have = {str(e) for _, ds in series if "gamma" in ds and "estimator" in ds.coords
            for e in ds.estimator.values}
    return [e for e in wanted if e in have]


def draw_compare_gamma(series: list[Series], estimators=None) -> plt.Figure:
    """gamma over epochs (mean +- std over runs), one panel per estimator, one colour per
    series; x ticks at every stored epoch of any series; legends below the panels."""
    names = shared_estimators(series, estimators)
    if not names:
        raise base.Skip("no store has a gamma fit of the named estimators")
    fig, axes = base.grid(len(names), size=(4.6, 4.6))
    palette = base.colours(len(series))
    for ax, name in zip(axes, names, strict=True):
        ax.axhspan(1, 2, color="0.88", label="1 <= gamma <= 2", zorder=0)
        ticks: set[int] = set()
        for (label, ds), colour in zip(series, palette, strict=True):
            if "gamma" not in ds or name not in [str(e) for e in ds.estimator.values]:
                continue
            epochs, y = base.over_epochs(ds, "gamma", estimator=name)
            base.band(ax, epochs, y, label=label, color=colour)
            ticks |= {int(e) for e in epochs}
        base.epoch_ticks(ax, sorted(ticks))
        ax.set_title(ESTIMATOR_LABELS.get(name, name), fontsize=10)
        base.axis_labels(ax, "epoch", "gamma", loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return base.finish(fig, "gamma over training, stores overlaid (mean ± std over runs)")


def draw_compare_powerlaw(series: list[Series], estimators=None) -> plt.Figure:
    """X_ii against lambda_i at each series' last finished epoch, every finished run's
    points in the series' colour, the line of its mean gamma through its fitted points
    (labelled with gamma, mean ± std over runs), slope-1 and slope-2 base.guides through each
    store's fitted points."""
    names = shared_estimators(series, estimators)
    if not names:
        raise base.Skip("no store has a gamma fit of the named estimators")
    fig, axes = base.grid(len(names), size=(4.6, 4.0))
    palette = base.colours(len(series))
    lasts = []
    for label, ds in series:
        try:
            lasts.append((label, base.last_epoch(ds)))
        except base.Skip:  # nothing finished in this one: no points
            lasts.append((label, xr.Dataset()))
    for ax, name in zip(axes, names, strict=True):
        for (label, one), colour in zip(lasts, palette, strict=True):
            if name not in one or "gamma" not in one or \
                    name not in [str(e) for e in one.estimator.values]:
                continue
            n_fit = int(one.attrs.get("n_fit") or one.sizes["eig"])
            lam = np.atleast_2d(np.asarray(one.hess_eigval.values, dtype=float))
            x = np.atleast_2d(diagonal(np.asarray(one[name].values, dtype=float)))
            gammas = np.asarray(one.gamma.sel(estimator=name).values, dtype=float).ravel()
            fx, fy = [], []
            for r in range(lam.shape[0]):
                ok, fit = fit_points(lam[r], x[r], n_fit)
                ax.loglog(lam[r][ok], x[r][ok], ".", ms=3, alpha=0.6, color=colour)
                fx.append(np.log10(lam[r][fit]))
                fy.append(np.log10(x[r][fit]))
            fx, fy = np.concatenate(fx), np.concatenate(fy)
            mean = np.nanmean(gammas) if np.isfinite(gammas).any() else np.nan
            if len(fx) >= 3 and np.isfinite(mean):
                std = f" ± {np.nanstd(gammas, ddof=1):.3f}" if len(gammas) > 1 else ""
                fit_line(ax, fx, fy, mean, color=colour, label=f"{label}: gamma = {mean:.3f}{std}")
                base.guides(ax, fx, fy, label=False)  # through this store's fitted points
        ax.set_title(ESTIMATOR_LABELS.get(name, name), fontsize=10)
        base.axis_labels(ax, "lambda_i", f"{name}_ii", loc="upper left",
                    legend=ax.get_legend_handles_labels()[0] != [])
    fig.legend(handles=[Line2D([], [], ls="--", color="0.4", label="slope 1 guide"),
                        Line2D([], [], ls=":", color="0.4", label="slope 2 guide")],
               loc="lower center", ncol=2, fontsize=base.LEGEND_SIZE, frameon=False)
    base.finish(fig, "X_ii against lambda_i at each store's last epoch, stores overlaid")
    fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.3 / fig.get_figheight())
    return fig
