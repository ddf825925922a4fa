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
import matplotlib.ticker  # noqa: E402
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


def band(ax, x, y, *, label=None, color=None, ls="-", marker="o", ms=3, **style):
    """Mean over axis 0 (runs) with a +-1 std band; one run is a plain line (``style``:
    further ``Axes.plot`` keywords, e.g. ``mfc``)."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(y, axis=0)
        std = np.nanstd(y, axis=0, ddof=1) if y.shape[0] > 1 else np.zeros_like(mean)
    (line,) = ax.plot(x, mean, ls=ls, marker=marker, ms=ms, label=label, color=color, **style)
    if y.shape[0] > 1:
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.25, lw=0)
    return line


EQUAL_RTOL = 1e-5
"""Two curves closer than this (relative to their largest |value|) are *equal*: the
legend says so (``= other``)."""
CLOSE = 0.01
"""Two curves closer than this (relative to their largest |value|) cannot be told apart by
eye: the later one is drawn dashed with open markers over the first, and its legend gives
the largest difference."""


def twin(y: np.ndarray, drawn: list[tuple[str, np.ndarray]],
         close: float = CLOSE) -> tuple[str, float] | None:
    """The first ``(label, curve)`` of ``drawn`` that the curve ``y`` lies on (within
    ``close`` over their common points) and the largest relative difference; None when
    it lies on none."""
    y = np.asarray(y, dtype=float)
    for label, other in drawn:
        n = min(len(y), len(other))
        both = np.isfinite(y[:n]) & np.isfinite(other[:n])
        if not both.any():
            continue
        a, b = y[:n][both], other[:n][both]
        scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
        diff = float(np.abs(a - b).max() / scale)
        if diff < close:
            return label, diff
    return None


def curve(ax, x, y, text: str, drawn: list[tuple[str, np.ndarray]], close: float = CLOSE,
          **style):
    """:func:`band` of ``y`` labelled ``text``; a curve that lies on one of ``drawn``
    (:func:`twin` within ``close``) is drawn dashed with open markers so that both show,
    and its label says ``= <other>`` (equal within :data:`EQUAL_RTOL`) or ``within
    <difference> of <other>``. Appends ``(text, mean over runs)`` to ``drawn``."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(y, axis=0)
    found = twin(mean, drawn, close)
    if found is not None:
        other, diff = found
        same = (f"= {other} (equal to {EQUAL_RTOL:.0e})" if diff < EQUAL_RTOL
                else f"within {diff:.1e} of {other}")
        text = f"{text} {same}"
        style = {**style, "ls": "--", "marker": "o", "mfc": "none", "ms": 5}
    drawn.append((text, mean))
    return band(ax, x, y, label=text, **style)


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


def guides(ax, lx: np.ndarray, ly: np.ndarray, slopes=(1, 2), label: bool = True):
    """Dashed slope guides through the centre of the log10 points, labelled ``slope 1``
    and ``slope 2`` in the legend unless ``label`` is False (a figure legend names them)."""
    if len(lx) < 2:
        return
    cx, cy = np.mean(lx), np.mean(ly)
    xs = np.linspace(lx.min(), lx.max(), 10)
    for s, ls in zip(slopes, ("--", ":"), strict=False):
        ax.loglog(10**xs, 10 ** (cy + s * (xs - cx)), ls, color="0.4", lw=1,
                  label=f"slope {s}" if label else None)


def finish(fig, title: str) -> plt.Figure:
    """Title the figure and tighten its layout."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def single(figsize=(6.5, 4)):
    """A one-panel figure at the report's default size: ``(fig, ax)``."""
    return plt.subplots(figsize=figsize)


LEGEND_SIZE = 8
"""Font size (points) of every legend: readable at the report's 100 dpi."""


def axis_labels(ax, xlabel: str, ylabel: str, *, legend: bool = True, **legend_kw):
    """Label both axes and, unless ``legend`` is False, draw the legend at
    :data:`LEGEND_SIZE` (``legend_kw`` go to ``Axes.legend``)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=LEGEND_SIZE, **legend_kw)


def epoch_ticks(ax, epochs, most: int = 12) -> None:
    """x ticks exactly at the stored ``epochs`` (every n-th when there are more than
    ``most``, always the first and the last), as integers."""
    epochs = [int(e) for e in epochs]
    step = max(1, -(-len(epochs) // most))
    ticks = epochs[::step]
    if epochs and ticks[-1] != epochs[-1]:
        ticks.append(epochs[-1])
    ax.set_xticks(ticks, [str(e) for e in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)


def colours(n: int) -> list:
    """``n`` distinct colours: matplotlib's ``tab10`` up to 10, ``tab20`` beyond."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]
