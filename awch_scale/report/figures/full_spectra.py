"""The full spectra of H, M and H_p = M - H (SPEC 6 ``density``, ``density_m``,
``density_hp``), in the style of the SGD-Dynamics study's Figure 1 ("eigen-spectrum
dynamics of the Hessian Hf, the second moment of SGs, and the residual term Hp"):

- left: the three spectral densities of one checkpoint (the last epoch with a finished
  analysis, its first finished run) on their shared grid, log density over five decades;
- right: their extremes over the epochs, mean +- std over runs: the largest eigenvalue
  (solid; ``hess_eigval``, ``m_eigval``, ``hp_eigval_top`` at rank 1) and the smallest
  (dashed; ``hp_eigval_bottom`` at rank 1 for H_p, the lowest grid point where the
  density of H or M is positive for them, to a grid step: each density is confined to
  its operator's spectrum), on a symmetric log scale.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from awch_scale.report.figures.base import axis_labels, band, finish, grid, last_epoch
from awch_scale.results.queries import done_epochs, done_mask

CURVES = (("density", "H", "C0"), ("density_m", "M", "C1"), ("density_hp", "H_p = M - H",
                                                             "C2"))
"""(density variable, label, colour) of the three operators."""

TOP = {"density": "hess_eigval", "density_m": "m_eigval", "density_hp": "hp_eigval_top"}
BOTTOM = {"density_hp": "hp_eigval_bottom"}


def _support_low(density: np.ndarray, grid_values: np.ndarray) -> float:
    """The lowest grid point where ``density`` is positive (NaN when none is)."""
    positive = np.flatnonzero(np.nan_to_num(density) > 0)
    return float(grid_values[positive[0]]) if len(positive) else np.nan


def _grid_values(ds: xr.Dataset) -> np.ndarray:
    """The density abscissae with the leading dims of ``ds`` and ``grid`` last."""
    if "density_grid" in ds:
        return np.asarray(ds.density_grid.values, dtype=float)
    return np.broadcast_to(np.asarray(ds.grid.values, dtype=float),
                           ds.density.shape).copy()


def _extremes(ds: xr.Dataset, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, largest (run, epoch), smallest (run, epoch)) of one operator's spectrum."""
    epochs = done_epochs(ds)
    names = [n for n in (name, TOP[name], BOTTOM.get(name), "density_grid") if n in ds]
    sub = ds[names].where(done_mask(ds)).sel(epoch=epochs)
    var = sub[TOP[name]]
    top = var.isel({"eig" if "eig" in var.dims else "rank": 0})
    top = np.asarray(top.transpose("run", "epoch").values, dtype=float)
    if name in BOTTOM:
        low = sub[BOTTOM[name]].isel(rank=0).transpose("run", "epoch").values
    else:
        d = sub[name].transpose("run", "epoch", "grid").values
        g = _grid_values(sub.transpose("run", "epoch", ...))
        low = np.array([[_support_low(d[i, j], g[i, j]) for j in range(d.shape[1])]
                        for i in range(d.shape[0])])
    return epochs, top, np.asarray(low, dtype=float)


def draw_full_spectra(ds: xr.Dataset) -> plt.Figure:
    """The densities of H, M and H_p at one checkpoint, and their extremes over epochs."""
    one = last_epoch(ds).isel(run=0)
    fig, (left, right) = grid(2, size=(5.2, 3.8))
    x = _grid_values(one)
    curves = [(np.asarray(one[name].values, dtype=float), label, colour)
              for name, label, colour in CURVES if name in one]
    peak = max((float(np.nanmax(y, initial=0.0)) for y, _, _ in curves), default=0.0)
    floor = peak * 1e-5 if peak > 0 else 0.0
    for y, label, colour in curves:
        # nothing below the floor is drawn: the Gaussians' far tails are not data
        left.plot(x, np.where(y > floor, y, np.nan), color=colour, lw=1, label=label)
    left.set_yscale("log")
    if peak > 0:
        left.set_ylim(floor, peak * 3)
    axis_labels(left, "eigenvalue", "spectral density")
    left.set_title(f"epoch {int(one.epoch.values)}, run {one.run.values}", fontsize=9)
    scale = 0.0
    for name, label, colour in CURVES:
        if name not in ds or TOP[name] not in ds:
            continue
        epochs, top, low = _extremes(ds, name)
        band(right, epochs, top, label=f"{label}: largest", color=colour, marker=".")
        band(right, epochs, low, label=f"{label}: smallest", color=colour, ls="--",
             marker=".")
        both = np.abs(np.concatenate([top.ravel(), low.ravel()]))
        scale = max(scale, float(np.nanmax(both, initial=0.0)))
    right.axhline(0, color="0.5", lw=0.8)
    right.set_yscale("symlog", linthresh=1e-3 * scale if scale > 0 else 1.0)
    axis_labels(right, "epoch", "extreme eigenvalue", legend=6)
    return finish(fig, "spectra of H, M and H_p = M - H (SGD-Dynamics Fig. 1)")
