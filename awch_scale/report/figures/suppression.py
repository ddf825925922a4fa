"""The suppression experiment (SPEC 7): the suppressed second moment against the first
per variant (paper Fig. 3, 13-15), and the cumulative mode fraction per direction."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from awch_scale.report.figures.base import (
    axis_labels,
    band,
    finish,
    grid,
    guides,
    last_epoch,
    single,
)


def draw_suppression(ds: xr.Dataset) -> plt.Figure:
    """log-log supp_h2 against supp_h1 per variant (Fig. 3, 13-15)."""
    one = last_epoch(ds)
    h1 = one.supp_h1.transpose("run", "variant", "eig")
    h2 = one.supp_h2.transpose("run", "variant", "eig")
    variants = list(h1.variant.values) if "variant" in h1.coords else \
        list(range(h1.sizes["variant"]))
    fig, axes = grid(len(variants))
    for j, (ax, variant) in enumerate(zip(axes, variants, strict=True)):
        x = np.asarray(h1.isel(variant=j).values, dtype=float).ravel()
        y = np.asarray(h2.isel(variant=j).values, dtype=float).ravel()
        ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
        ax.loglog(x[ok], y[ok], ".", ms=4)
        guides(ax, np.log10(x[ok]), np.log10(y[ok]))
        title = str(variant)
        if "supp_gamma" in one:
            g = np.asarray(one.supp_gamma.isel(variant=j).values, dtype=float)
            title += f"\nslope = {np.nanmean(g):.3f}"
        ax.set_title(title, fontsize=9)
        axis_labels(ax, "supp_h1", "supp_h2")
    return finish(fig, f"suppression experiment: second against first moment, epoch "
                       f"{int(one.epoch.values)}")


def draw_mode_cumfrac(ds: xr.Dataset) -> plt.Figure:
    """Cumulative mode fraction per Hessian direction (SPEC 7)."""
    one = last_epoch(ds)
    v = one.mode_cumfrac.transpose("run", "mode", "eig")
    k = v.sizes["eig"]
    picks = sorted({i for i in (0, 1, 4, 9, 49, k - 1) if i < k})
    fig, ax = single()
    modes = np.arange(1, v.sizes["mode"] + 1)
    for i in picks:
        band(ax, modes, v.isel(eig=i).values, label=f"i = {i + 1}", marker=".")
    ax.set_ylim(0, 1.05)
    axis_labels(ax, "modes m <= j", "cumulative fraction")
    return finish(fig, f"cumulative mode fraction, epoch {int(one.epoch.values)}")
