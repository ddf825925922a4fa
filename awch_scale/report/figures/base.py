"""What every figure of the report is made of: :class:`FigureSpec` (the variables a figure
needs and its ``draw(ds)``), :class:`Skip`, :func:`missing`, and the drawing helpers the
figure families share (mean +- std bands over runs, panel grids, slope guides).

Several runs (seeds) are drawn as their mean with a band of +- one standard deviation
over runs (``numpy.nanstd``, ddof = 1); per-analysis figures use :func:`last_epoch`.
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

from awch_scale.results.queries import done_epochs, done_mask  # noqa: E402
from awch_scale.variables import VARIABLES  # noqa: E402


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


def last_epoch(ds: xr.Dataset) -> xr.Dataset:
    """The finished runs at the last epoch with a finished analysis."""
    epochs = done_epochs(ds)
    if len(epochs) == 0:
        raise Skip("no finished analysis in the store")
    one = ds.sel(epoch=epochs[-1])
    return one.isel(run=np.flatnonzero(done_mask(ds).sel(epoch=epochs[-1]).values))


def long_name(name: str) -> str:
    """The registry's ``long_name`` of a variable (its name when unregistered)."""
    var = VARIABLES.get(name)
    return var.long_name if var else name


def band(ax, x, y, *, label=None, color=None, ls="-", marker="o"):
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


def over_epochs(ds: xr.Dataset, name: str, **sel) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values (run, epoch)) of a scalar-per-analysis variable, unfinished -> NaN."""
    epochs = done_epochs(ds)
    v = ds[name].sel(**sel) if sel else ds[name]
    v = v.where(done_mask(ds)).sel(epoch=epochs).transpose("run", "epoch")
    return epochs, np.asarray(v.values, dtype=float)


def grid(n: int, size=(4.2, 3.6)):
    """A figure of ``n`` panels, at most 3 a row (the unused ones hidden), and the panels."""
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, list(axes.flat[:n])


def guides(ax, lx: np.ndarray, ly: np.ndarray, slopes=(1, 2)):
    """Dashed slope guides through the centre of the log10 points."""
    if len(lx) < 2:
        return
    cx, cy = np.mean(lx), np.mean(ly)
    xs = np.linspace(lx.min(), lx.max(), 10)
    for s, ls in zip(slopes, ("--", ":"), strict=False):
        ax.loglog(10**xs, 10 ** (cy + s * (xs - cx)), ls, color="0.4", lw=1,
                  label=f"slope {s}")


def finish(fig, title: str) -> plt.Figure:
    """Title the figure and tighten its layout."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def single(figsize=(6.5, 4)):
    """A one-panel figure at the report's default size: ``(fig, ax)``."""
    return plt.subplots(figsize=figsize)


def axis_labels(ax, xlabel: str, ylabel: str, *, legend: int | None = 7, **legend_kw):
    """Label both axes and, unless ``legend`` is None, draw the legend at that font size."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend is not None:
        ax.legend(fontsize=legend, **legend_kw)
