"""Figures from a store: the power law C_ii ~ lambda_i^gamma (paper Fig. 3) and the
covariance in the Hessian eigenbasis with its correlation matrix (paper Fig. 1)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from .analysis import diagonal  # noqa: E402

_STYLE = {"covar": ("C_ii (empirical)", "tab:blue"), "h2": ("E_p[h_p^2]_ii (AWD)", "tab:red"),
          "c_awd_raw": ("C^AWD_ii", "tab:green"), "covar_mb": ("C^mb_ii", "tab:gray")}


def powerlaw_figure(one: xr.Dataset, *, title: str = "") -> plt.Figure:
    """Two panels for one (run, epoch[, layer]) of a store.

    Left: log-log of X_ii against lambda_i for the stored estimators with their fitted
    slope gamma (the fit range i <= n_fit is drawn solid). Right: |R_ij| =
    |C_ij| / sqrt(C_ii C_jj) of ``covar`` in the Hessian eigenbasis.
    """
    lam = np.asarray(one.hess_eigval.values, dtype=float)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    estimators = list(one.estimator.values) if "estimator" in one.coords else []
    for name in [e for e in _STYLE if e in one and e in estimators]:
        label, color = _STYLE[name]
        x = diagonal(np.asarray(one[name].values, dtype=float))
        ok = (x > 0) & (lam > 0)
        n = int(one.gamma_n.sel(estimator=name))
        ax.loglog(lam[ok], x[ok], ".", color=color, alpha=0.35)
        ax.loglog(lam[:n][ok[:n]], x[:n][ok[:n]], ".", color=color,
                  label=f"{label}: gamma = {float(one.gamma.sel(estimator=name)):.3f} "
                        f"± {float(one.gamma_stderr.sel(estimator=name)):.3f}")
        if n >= 3:
            g = float(one.gamma.sel(estimator=name))
            lx = np.log10(lam[:n][ok[:n]])
            c = np.mean(np.log10(x[:n][ok[:n]]) - g * lx)
            grid = np.linspace(lx.min(), lx.max(), 20)
            ax.loglog(10**grid, 10 ** (c + g * grid), "-", color=color, lw=1)
    ax.set_xlabel("Hessian eigenvalue lambda_i")
    ax.set_ylabel("diagonal element in the Hessian eigenbasis")
    ax.legend(fontsize=8)
    ax.set_title("power law X_ii ~ lambda_i^gamma")
    C = np.asarray(one.covar.values, dtype=float)
    if C.ndim == 2:
        d = np.sqrt(np.abs(np.diag(C)))
        with np.errstate(divide="ignore", invalid="ignore"):
            R = np.abs(C / np.outer(d, d))
        im = ax2.imshow(R, vmin=0, vmax=1, cmap="viridis")
        fig.colorbar(im, ax=ax2, fraction=0.046)
        ax2.set_title("|R_ij| of C in the Hessian eigenbasis")
        ax2.set_xlabel("j")
        ax2.set_ylabel("i")
    else:
        ax2.set_axis_off()
        ax2.text(0.5, 0.5, "covar stored as diagonal only", ha="center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figures(ds: xr.Dataset, out: Path) -> list[Path]:
    """One PNG per finished (run, epoch[, layer]) of the store, written under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    layers = list(ds.layer.values) if "layer" in ds.dims else [None]
    for seed in ds.run.values:
        for epoch in ds.epoch.values:
            one = ds.sel(run=seed, epoch=epoch)
            if not bool(one.done.values.all()):
                continue
            for layer in layers:
                sel = one.sel(layer=layer) if layer is not None else one
                tag = f"run{seed}_epoch{epoch}" + (f"_{layer}" if layer is not None else "")
                fig = powerlaw_figure(sel, title=f"{ds.attrs.get('recipe_name', '')} {tag} "
                                                 f"(loss {ds.attrs.get('loss')})")
                path = out / f"powerlaw_{tag}.png"
                fig.savefig(path, dpi=110)
                plt.close(fig)
                paths.append(path)
    return paths
