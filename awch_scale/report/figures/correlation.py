"""The correlation figure: |R_ij| of C in the Hessian eigenbasis beside a Haar-rotated C
with the same spectrum (paper Fig. 1, 7-9)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from awch_scale.analysis.statistics import correlation, haar_rotated
from awch_scale.report.figures.base import Skip, last_epoch


def draw_corr(ds: xr.Dataset, top: int = 40, seed: int = 0) -> plt.Figure:
    """|R_ij| of C in the Hessian eigenbasis beside a Haar-rotated C (paper Fig. 1, 7-9)."""
    one = last_epoch(ds)
    c = np.asarray(one.covar.isel(run=0).values, dtype=float)
    if c.ndim != 2:
        raise Skip("covar is stored as its diagonal only (analysis.diag_only)")
    m = min(top, c.shape[0])
    c = c[:m, :m]
    rotated = haar_rotated(np.linalg.eigvalsh((c + c.T) / 2), np.random.default_rng(seed))
    panels = [("C in the Hessian eigenbasis", np.abs(correlation(c))),
              ("Haar-rotated C (same spectrum)", np.abs(correlation(rotated)))]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.4), layout="constrained")
    off = ~np.eye(m, dtype=bool)
    for ax, (title, r) in zip(axes, panels, strict=True):
        im = ax.imshow(r, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{title}\nmean |R_ij|, i != j: {np.nanmean(r[off]):.3f}", fontsize=9)
        ax.set_xlabel("j")
        ax.set_ylabel("i")
    fig.colorbar(im, ax=list(axes), fraction=0.03)
    fig.suptitle(f"|R_ij| of C, top {m} directions, run {int(one.run.values[0])}, "
                 f"epoch {int(one.epoch.values)}", fontsize=10)
    return fig
