"""Spectra beyond the top k (SPEC 6): eigenvalues of H, M, C and F by rank, the extreme
eigenvalues of H_p = M - H, principal cosines between top eigenspaces, and the SLQ
spectral density of H. Each ranked figure is one panel of ranked curves at the last
epoch (:func:`_ranked_figure`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from awch_scale.report.figures.base import (
    Skip,
    axis_labels,
    colours,
    curve,
    finish,
    last_epoch,
    long_name,
    single,
)


def _ranked_figure(ds: xr.Dataset, curves, *, xlabel: str, ylabel: str, title: str,
                   scale=None) -> plt.Figure:
    """One panel at the last epoch: each ``(variable, label)`` of ``curves`` that is in the
    store against its rank 1..r (mean +- std over runs); a curve that lies on one drawn
    before it is drawn so that both show, and its legend says so (:func:`curve`). The
    legend lies below the panel, off the curves.

    Args:
        ds: the store's dataset.
        curves: ``(variable, legend label)`` pairs, drawn in order when present.
        xlabel: the x axis label.
        ylabel: the y axis label.
        title: the figure title; ``{epoch}`` is replaced by the epoch drawn.
        scale: ``scale(ax, one)`` sets the axes' scales and limits (None: linear).
    """
    one = last_epoch(ds)
    fig, ax = single((6.5, 5.2))
    drawn: list[tuple[str, np.ndarray]] = []
    for name, text in curves:
        if name in one:
            y = np.asarray(one[name].values, dtype=float)
            curve(ax, np.arange(1, y.shape[-1] + 1), y, text, drawn, marker=".")
    if scale is not None:
        scale(ax, one)
    axis_labels(ax, xlabel, ylabel, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    return finish(fig, title.format(epoch=int(one.epoch.values)))


def _loglog(ax, one: xr.Dataset) -> None:
    ax.set_yscale("log")
    ax.set_xscale("log")


def _symlog(ax, one: xr.Dataset) -> None:
    """Symmetric log scale, linear within 1e-3 of the largest |eigenvalue|, with a zero line."""
    ax.axhline(0, color="0.5", lw=0.8)
    scale = np.nanmax(np.abs([one.hp_eigval_top.values, one.hp_eigval_bottom.values]))
    ax.set_yscale("symlog", linthresh=1e-3 * scale if np.isfinite(scale) and scale > 0 else 1)


def _unit_interval(ax, one: xr.Dataset) -> None:
    ax.set_ylim(0, 1.05)


def draw_spectra(ds: xr.Dataset) -> plt.Figure:
    """Hessian and second-moment eigenvalues by rank."""
    names = ("hess_eigval", "m_eigval", "c_eigval", "fisher_eigval")
    return _ranked_figure(ds, [(n, long_name(n)) for n in names], xlabel="rank",
                          ylabel="eigenvalue",
                          title="eigenvalues of H, M, C and F by rank, epoch {epoch}",
                          scale=_loglog)


def draw_hp(ds: xr.Dataset) -> plt.Figure:
    """Extreme eigenvalues of H_p = M - H."""
    return _ranked_figure(ds, [("hp_eigval_top", "largest (algebraic)"),
                               ("hp_eigval_bottom", "smallest (algebraic, ascending)")],
                          xlabel="rank", ylabel="eigenvalue of H_p = M - H",
                          title="extreme eigenvalues of H_p, epoch {epoch}", scale=_symlog)


def draw_principal_cos(ds: xr.Dataset) -> plt.Figure:
    """Principal cosines between the top eigenspaces of H and M, H and C."""
    return _ranked_figure(ds, [("principal_cos", "H and M"), ("hc_principal_cos", "H and C")],
                          xlabel="angle index", ylabel="cosine",
                          title="principal cosines between top eigenspaces, epoch {epoch}",
                          scale=_unit_interval)


DENSITY_FLOOR = 1e-6
"""The density's log axis ends at this fraction of its peak; the broadening's Gaussian
tails below it are not drawn (as Ghorbani et al. 2019 and Papyan 2020 draw it)."""


def draw_density(ds: xr.Dataset) -> plt.Figure:
    """SLQ spectral density of H on a log axis clipped at :data:`DENSITY_FLOOR` of its peak,
    one curve per run, with the top-k eigenvalues ``hess_eigval`` marked along the x axis."""
    one = last_epoch(ds)
    d = one.density.transpose("run", "grid")
    runs = [int(r) for r in one.run.values]
    palette = colours(len(runs))
    ys = np.asarray(d.values, dtype=float)
    if "density_grid" in one:  # each analysis has its own grid: one curve per run
        xs = np.asarray(one.density_grid.transpose("run", "grid").values, dtype=float)
        labelled = True
    else:
        labelled = "grid" in d.coords
        x = np.asarray(d.grid.values if labelled else np.arange(d.sizes["grid"]), dtype=float)
        xs = np.broadcast_to(x, ys.shape)
    peak = np.nanmax(ys) if np.isfinite(ys).any() else np.nan
    if not (np.isfinite(peak) and peak > 0):
        raise Skip("density has no positive value")
    floor = DENSITY_FLOOR * peak
    fig, ax = single()
    for r, (x, y) in enumerate(zip(xs, ys, strict=True)):
        order = np.argsort(x)
        y = np.where(y[order] >= floor, y[order], np.nan)  # the tails below: not drawn
        ax.plot(x[order], y, lw=1.2, color=palette[r], label=f"SLQ density, run {runs[r]}")
    ax.set_yscale("log")
    ax.set_ylim(floor, peak * 3)
    if labelled and "hess_eigval" in one:
        lam = np.atleast_2d(np.asarray(one.hess_eigval.values, dtype=float))
        for r, row in enumerate(lam):
            row = row[np.isfinite(row)]
            ax.vlines(row, 0, 0.07, transform=ax.get_xaxis_transform(), color=palette[r],
                      lw=0.9, label=f"top {len(row)} eigenvalues lambda_i, run {runs[r]}")
    ax.grid(True, which="major", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    axis_labels(ax, "eigenvalue" if labelled else "grid point", "spectral density of H",
                loc="upper right")
    return finish(fig, f"Hessian spectral density (SLQ), epoch {int(one.epoch.values)}; "
                       f"axis floor {DENSITY_FLOOR:g} x peak")
