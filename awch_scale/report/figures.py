"""The paper's figures drawn from a store, each written against the registered variable
names and dims of :mod:`awch_scale.variables`.

Every figure is a :class:`FigureSpec`: the variables it needs (``requires``) and a
``draw(ds)`` that returns a matplotlib figure. :func:`missing` says why a figure cannot
be drawn from a store (a variable is absent, or present but never computed); the report
then lists it as skipped instead of drawing anything. A figure appears as soon as its
variables are in the store, with no change here.

Several runs (seeds) are drawn as their mean with a band of +- one standard deviation
over runs (``numpy.nanstd``, ddof = 1); per-analysis figures (power law, correlation,
suppression) use the last epoch with a finished analysis and draw every finished run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from awch_scale.analysis.statistics import correlation, diagonal, haar_rotated
from awch_scale.results.queries import done_epochs, done_mask
from awch_scale.variables import GAMMA_ESTIMATORS, VARIABLES  # noqa: E402

ESTIMATOR_LABELS = {
    "covar": "C (gamma_emp)", "covar_mb": "C minibatch", "covar_within": "C within-class",
    "c_pair": "C pair", "c_awd_raw": "C^AWD (gamma'_AWD)", "c_hh": "C^hh",
    "c_hh_sd": "C^hh same-sample", "c_hh_sd_wd": "C^hh s.-s. diag. w", "c_li": "C Thm 3.4",
    "h2": "E_p[h_p^2] (gamma_AWD)", "fisher": "Fisher",
}
"""Panel titles of the power-law estimators (SPEC 6)."""


class Skip(Exception):
    """A figure cannot be drawn from this store; the message says why (one line)."""


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report.

    Attributes:
        name: file stem of the PNG.
        caption: what it shows (the report's caption).
        paper: the paper's figures it corresponds to.
        requires: variables that must be in the store with at least one finite value.
        draw: ``ds -> Figure`` (may raise :class:`Skip`).
        per_analysis: drawn in ``awch-scale plot`` once per finished (run, epoch).
    """

    name: str
    caption: str
    paper: str
    requires: tuple[str, ...]
    draw: Callable[[xr.Dataset], plt.Figure]
    per_analysis: bool = False


# ----------------------------------------------------------------- helpers


def last_epoch(ds: xr.Dataset) -> xr.Dataset:
    """The finished runs at the last epoch with a finished analysis."""
    epochs = done_epochs(ds)
    if len(epochs) == 0:
        raise Skip("no finished analysis in the store")
    one = ds.sel(epoch=epochs[-1])
    return one.isel(run=np.flatnonzero(done_mask(ds).sel(epoch=epochs[-1]).values))


def _label(name: str) -> str:
    var = VARIABLES.get(name)
    return var.long_name if var else name


def _band(ax, x, y, *, label=None, color=None, ls="-", marker="o"):
    """Mean over axis 0 (runs) with a +-1 std band; one run is a plain line."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(y, axis=0)
        std = np.nanstd(y, axis=0, ddof=1) if y.shape[0] > 1 else np.zeros_like(mean)
    (line,) = ax.plot(x, mean, ls=ls, marker=marker, ms=3, label=label, color=color)
    if y.shape[0] > 1:
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.25, lw=0)
    return line


def _over_epochs(ds: xr.Dataset, name: str, **sel) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values (run, epoch)) of a scalar-per-analysis variable, unfinished -> NaN."""
    epochs = done_epochs(ds)
    v = ds[name].sel(**sel) if sel else ds[name]
    v = v.where(done_mask(ds)).sel(epoch=epochs).transpose("run", "epoch")
    return epochs, np.asarray(v.values, dtype=float)


def _grid(n: int, size=(4.2, 3.6)):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, list(axes.flat[:n])


def _guides(ax, lx: np.ndarray, ly: np.ndarray, slopes=(1, 2)):
    """Dashed slope guides through the centre of the log10 points."""
    if len(lx) < 2:
        return
    cx, cy = np.mean(lx), np.mean(ly)
    grid = np.linspace(lx.min(), lx.max(), 10)
    for s, ls in zip(slopes, ("--", ":"), strict=False):
        ax.loglog(10**grid, 10 ** (cy + s * (grid - cx)), ls, color="0.4", lw=1,
                  label=f"slope {s}")


def _finish(fig, title: str) -> plt.Figure:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------- Fig. 1, 7-9


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
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
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


# ----------------------------------------------------------------- Fig. 2, 10-12


def gamma_estimators(ds: xr.Dataset) -> list[str]:
    """Estimators that have a gamma fit and their X_ii in the store, in SPEC 6 order."""
    if "gamma" not in ds or "estimator" not in ds.coords:
        return []
    names = {str(e) for e in ds.estimator.values}
    return [e for e in GAMMA_ESTIMATORS if e in names and e in ds]


def draw_powerlaw(ds: xr.Dataset) -> plt.Figure:
    """log-log X_ii against lambda_i with fitted slopes and slope-1/2 guides (Fig. 2, 10-12)."""
    one = last_epoch(ds)
    names = gamma_estimators(one)
    if not names:
        raise Skip("no power-law estimator with its gamma fit in the store")
    n_fit = int(ds.attrs.get("n_fit") or one.sizes["eig"])
    fig, axes = _grid(len(names))
    lam_all = np.asarray(one.hess_eigval.values, dtype=float)  # (run, eig)
    for ax, name in zip(axes, names, strict=True):
        x_all = diagonal(np.asarray(one[name].values, dtype=float))
        gammas = np.asarray(one.gamma.sel(estimator=name).values, dtype=float)
        fit_x, fit_y = [], []
        for r in range(lam_all.shape[0]):
            lam, x = lam_all[r], x_all[r]
            ok = (lam > 0) & (x > 0) & np.isfinite(x)
            fit = ok & (np.arange(len(lam)) < n_fit)
            ax.loglog(lam[ok & ~fit], x[ok & ~fit], ".", color="0.6", ms=3)
            ax.loglog(lam[fit], x[fit], ".", ms=4, alpha=0.7,
                      label=f"run {int(one.run.values[r])}" if lam_all.shape[0] > 1 else None)
            if fit.sum() >= 3 and np.isfinite(gammas[r]):
                lx, ly = np.log10(lam[fit]), np.log10(x[fit])
                c0 = np.mean(ly - gammas[r] * lx)
                g = np.linspace(lx.min(), lx.max(), 10)
                ax.loglog(10**g, 10 ** (c0 + gammas[r] * g), "-", color="k", lw=1)
                fit_x.append(lx)
                fit_y.append(ly)
        if fit_x:
            _guides(ax, np.concatenate(fit_x), np.concatenate(fit_y))
        std = f" ± {np.nanstd(gammas, ddof=1):.3f}" if len(gammas) > 1 else ""
        ax.set_title(f"{ESTIMATOR_LABELS.get(name, name)}\ngamma = {np.nanmean(gammas):.3f}"
                     f"{std}", fontsize=9)
        ax.set_xlabel("lambda_i")
        ax.set_ylabel(f"{name}_ii")
        ax.legend(fontsize=6)
    return _finish(fig, f"X_ii against lambda_i at epoch {int(one.epoch.values)} "
                        f"(fit over i <= {n_fit}, solid line: fitted slope)")


# ----------------------------------------------------------------- Fig. 4 a-f


def draw_gamma_epochs(ds: xr.Dataset) -> plt.Figure:
    """gamma per estimator over epochs with the [1, 2] band (Fig. 4a)."""
    names = gamma_estimators(ds) or [str(e) for e in ds.estimator.values]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.axhspan(1, 2, color="0.85", label="1 <= gamma <= 2")
    for name in names:
        epochs, y = _over_epochs(ds, "gamma", estimator=name)
        _band(ax, epochs, y, label=ESTIMATOR_LABELS.get(name, name))
    ax.set_xlabel("epoch")
    ax.set_ylabel("gamma")
    ax.legend(fontsize=7, ncol=2)
    return _finish(fig, "power-law exponent per estimator over training")


def _scalar_epochs(names: tuple[str, ...], title: str, ylabel: str, logy=False):
    def draw(ds: xr.Dataset) -> plt.Figure:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name in names:
            if name in ds:
                epochs, y = _over_epochs(ds, name)
                _band(ax, epochs, y, label=_label(name))
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        return _finish(fig, title)
    return draw


def draw_training(ds: xr.Dataset) -> plt.Figure:
    """Train/test loss and accuracy over epochs."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = ds.train_epoch.values
    for ax, kind in ((a1, "loss"), (a2, "acc")):
        for split in ("train", "test"):
            name = f"curve_{split}_{kind}"
            if name in ds:
                y = ds[name].transpose("run", "train_epoch").values
                _band(ax, x, y, label=split, marker="")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if kind == "loss" else "accuracy")
        ax.legend(fontsize=7)
    a1.set_yscale("log")
    return _finish(fig, "training curves (analysis set = train, test set)")


def draw_frob(ds: xr.Dataset) -> plt.Figure:
    """Frobenius norms of the AWD terms over epochs (Fig. 4f)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    terms = ds.frob.coords["term"].values if "term" in ds.frob.coords else \
        np.arange(ds.sizes["term"])
    for i, term in enumerate(terms):
        epochs, y = _over_epochs(ds, "frob", **({"term": term} if "term" in ds.frob.coords
                                                else {}))
        if "term" not in ds.frob.coords:
            y = y[..., i]
        _band(ax, epochs, y, label=str(term))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("||X||_F")
    ax.legend(fontsize=7, ncol=2)
    return _finish(fig, "Frobenius norms of the AWD terms over training")


# ----------------------------------------------------------------- Fig. 3, 13-15


def draw_suppression(ds: xr.Dataset) -> plt.Figure:
    """log-log supp_h2 against supp_h1 per variant (Fig. 3, 13-15)."""
    one = last_epoch(ds)
    h1 = one.supp_h1.transpose("run", "variant", "eig")
    h2 = one.supp_h2.transpose("run", "variant", "eig")
    variants = list(h1.variant.values) if "variant" in h1.coords else \
        list(range(h1.sizes["variant"]))
    fig, axes = _grid(len(variants))
    for j, (ax, variant) in enumerate(zip(axes, variants, strict=True)):
        x = np.asarray(h1.isel(variant=j).values, dtype=float).ravel()
        y = np.asarray(h2.isel(variant=j).values, dtype=float).ravel()
        ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
        ax.loglog(x[ok], y[ok], ".", ms=4)
        _guides(ax, np.log10(x[ok]), np.log10(y[ok]))
        title = str(variant)
        if "supp_gamma" in one:
            g = np.asarray(one.supp_gamma.isel(variant=j).values, dtype=float)
            title += f"\nslope = {np.nanmean(g):.3f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("supp_h1")
        ax.set_ylabel("supp_h2")
        ax.legend(fontsize=6)
    return _finish(fig, f"suppression experiment: second against first moment, epoch "
                        f"{int(one.epoch.values)}")


def draw_mode_cumfrac(ds: xr.Dataset) -> plt.Figure:
    """Cumulative mode fraction per Hessian direction (SPEC 7)."""
    one = last_epoch(ds)
    v = one.mode_cumfrac.transpose("run", "mode", "eig")
    k = v.sizes["eig"]
    picks = sorted({i for i in (0, 1, 4, 9, 49, k - 1) if i < k})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    modes = np.arange(1, v.sizes["mode"] + 1)
    for i in picks:
        _band(ax, modes, v.isel(eig=i).values, label=f"i = {i + 1}", marker=".")
    ax.set_xlabel("modes m <= j")
    ax.set_ylabel("cumulative fraction")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    return _finish(fig, f"cumulative mode fraction, epoch {int(one.epoch.values)}")


# ----------------------------------------------------------------- spectra


def _ranked(ax, one: xr.Dataset, name: str, label: str, absolute=False, marker="."):
    y = np.asarray(one[name].values, dtype=float)
    y = np.abs(y) if absolute else y
    _band(ax, np.arange(1, y.shape[-1] + 1), y, label=label, marker=marker)


def draw_spectra(ds: xr.Dataset) -> plt.Figure:
    """Hessian and second-moment eigenvalues by rank."""
    one = last_epoch(ds)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in ("hess_eigval", "m_eigval", "c_eigval", "fisher_eigval"):
        if name in one:
            _ranked(ax, one, name, _label(name))
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=7)
    return _finish(fig, f"eigenvalues of H and M, epoch {int(one.epoch.values)}")


def draw_hp(ds: xr.Dataset) -> plt.Figure:
    """Extreme eigenvalues of H_p = M - H."""
    one = last_epoch(ds)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _ranked(ax, one, "hp_eigval_top", "largest (algebraic)")
    _ranked(ax, one, "hp_eigval_bottom", "smallest (algebraic, ascending)")
    ax.axhline(0, color="0.5", lw=0.8)
    scale = np.nanmax(np.abs([one.hp_eigval_top.values, one.hp_eigval_bottom.values]))
    ax.set_yscale("symlog", linthresh=1e-3 * scale if np.isfinite(scale) and scale > 0 else 1)
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue of H_p = M - H")
    ax.legend(fontsize=7)
    return _finish(fig, f"extreme eigenvalues of H_p, epoch {int(one.epoch.values)}")


def draw_principal_cos(ds: xr.Dataset) -> plt.Figure:
    """Principal cosines between the top eigenspaces of H and M, H and C."""
    one = last_epoch(ds)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _ranked(ax, one, "principal_cos", "H and M")
    if "hc_principal_cos" in one:
        _ranked(ax, one, "hc_principal_cos", "H and C")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("angle index")
    ax.set_ylabel("cosine")
    ax.legend(fontsize=7)
    return _finish(fig, f"principal cosines between top eigenspaces, epoch "
                        f"{int(one.epoch.values)}")


def draw_density(ds: xr.Dataset) -> plt.Figure:
    """SLQ spectral density of H on its grid."""
    one = last_epoch(ds)
    d = one.density.transpose("run", "grid")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if "density_grid" in one:  # each analysis has its own grid: one curve per run
        grids = one.density_grid.transpose("run", "grid").values
        for g, y in zip(grids, d.values, strict=True):
            ax.plot(np.asarray(g, dtype=float), np.asarray(y, dtype=float), lw=1)
        labelled = True
    else:
        labelled = "grid" in d.coords
        x = np.asarray(d.grid.values if labelled else np.arange(d.sizes["grid"]), dtype=float)
        _band(ax, x, np.asarray(d.values, dtype=float), label="density", marker="")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue" if labelled else "grid point")
    ax.set_ylabel("spectral density of H")
    return _finish(fig, f"Hessian spectral density (SLQ), epoch {int(one.epoch.values)}")


# ----------------------------------------------------------------- the catalogue

FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("corr", "|R_ij| of C in the Hessian eigenbasis next to a Haar-rotated C with "
               "the same spectrum (rotation seeded, drawn for display)", "Fig. 1, 7-9",
               ("covar", "hess_eigval"), draw_corr),
    FigureSpec("powerlaw", "log-log X_ii against lambda_i per estimator, fitted slope "
               "(solid) with slope-1 and slope-2 guides (dashed, dotted)", "Fig. 2, 10-12",
               ("hess_eigval", "gamma"), draw_powerlaw, per_analysis=True),
    FigureSpec("gamma_epochs", "gamma per estimator over training; grey band: [1, 2]",
               "Fig. 4a", ("gamma",), draw_gamma_epochs),
    FigureSpec("comm_err", "commutation error of C and H with its Haar-rotated and "
               "unrelated-matrix baselines", "Fig. 4b",
               ("comm_err",), _scalar_epochs(("comm_err", "comm_err_rand",
                                              "comm_err_unrelated"),
                                             "commutation error over training", "error")),
    FigureSpec("eig_alignment", "eigenbasis alignment sqrt(sum C_ii^2)/||C||_F", "Fig. 4c",
               ("eig_alignment",), _scalar_epochs(("eig_alignment",),
                                                  "eigenbasis alignment over training",
                                                  "alignment")),
    FigureSpec("spearman", "Spearman rank correlation of C_ii with lambda_i", "Fig. 4d",
               ("spearman",), _scalar_epochs(("spearman",), "rank correlation over training",
                                             "Spearman rho")),
    FigureSpec("training", "train and test loss and accuracy per epoch", "Fig. 4e",
               ("curve_train_loss",), draw_training),
    FigureSpec("frob", "Frobenius norms of the AWD terms", "Fig. 4f", ("frob",), draw_frob),
    FigureSpec("suppression", "suppressed second moment against first moment per variant "
               "(log-log, slope guides)", "Fig. 3, 13-15", ("supp_h1", "supp_h2"),
               draw_suppression),
    FigureSpec("mode_cumfrac", "cumulative fraction of the per-sample Hessian modes in "
               "E_p[h_p^2]_ii", "Fig. 13-15", ("mode_cumfrac",), draw_mode_cumfrac),
    FigureSpec("spectra", "top eigenvalues of H and M (and C, F when stored)", "SPEC 6",
               ("hess_eigval", "m_eigval"), draw_spectra),
    FigureSpec("hp_extremes", "largest and smallest eigenvalues of H_p = M - H", "SPEC 6",
               ("hp_eigval_top", "hp_eigval_bottom"), draw_hp),
    FigureSpec("principal_cos", "principal cosines between the top eigenspaces of H and M "
               "(and C)", "SPEC 6", ("principal_cos",), draw_principal_cos),
    FigureSpec("density", "spectral density of H on its grid", "SPEC 6", ("density",),
               draw_density),
)
"""Every figure of the store report, in report order."""


def missing(ds: xr.Dataset, spec: FigureSpec) -> str | None:
    """Why ``spec`` cannot be drawn from ``ds`` (one line), or None when it can."""
    absent = [n for n in spec.requires if n not in ds]
    if absent:
        return f"needs {', '.join(absent)} (not in this store)"
    empty = [n for n in spec.requires
             if np.issubdtype(ds[n].dtype, np.number) and not np.isfinite(ds[n].values).any()]
    if empty:
        return f"{', '.join(empty)} has no finished value in this store"
    return None


# ----------------------------------------------------------------- sweeps


def draw_sweep(table_rows: list[dict], keys: list[str]) -> plt.Figure:
    """gamma_emp, gamma_AWD, gamma'_AWD (mean +- std over runs) against each swept value,
    one line per combination of the other swept values (the reference's Fig. 5-6 style)."""
    from awch_scale.results.table import HEADERS

    fig, axes = _grid(len(keys), size=(5, 3.8))
    for ax, key in zip(axes, keys, strict=True):
        others = [k for k in keys if k != key]
        groups: dict[tuple, list[dict]] = {}
        for row in table_rows:
            groups.setdefault(tuple(row[k] for k in others), []).append(row)
        for (col, label), marker in zip(HEADERS.items(), "osd", strict=True):
            for g, rows in groups.items():
                rows = [r for r in rows if np.isfinite(r[f"{col}_mean"])]
                if not rows:
                    continue
                rows.sort(key=lambda r: _sort_key(r[key]))
                xs = [_xval(r[key]) for r in rows]
                tag = ", ".join(f"{k}={v}" for k, v in zip(others, g, strict=True))
                ax.errorbar(xs, [r[f"{col}_mean"] for r in rows],
                            yerr=[r[f"{col}_std"] for r in rows], marker=marker, capsize=3,
                            label=f"{label}" + (f" ({tag})" if tag else ""))
        ax.axhspan(1, 2, color="0.9", zorder=0)
        ax.set_xlabel(key)
        ax.set_ylabel("gamma")
        ax.legend(fontsize=6)
    return _finish(fig, "gamma against each swept value (mean ± std over runs)")


def _sort_key(v):
    return (0, float(v)) if isinstance(v, int | float) else (1, str(v))


def _xval(v):
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)
