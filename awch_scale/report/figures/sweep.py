"""The sweep figure: the paper's named gammas (mean +- std over runs) against each swept
value, one line per combination of the other swept values (the reference's Fig. 5-6)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from awch_scale.report.figures.base import axis_labels, finish, grid
from awch_scale.results.table import HEADERS


def draw_sweep(table_rows: list[dict], keys: list[str]) -> plt.Figure:
    """gamma_emp, gamma_AWD, gamma'_AWD (:data:`~awch_scale.results.table.HEADERS`;
    mean +- std over runs) against each swept value, one line per combination of the other
    swept values (the reference's Fig. 5-6 style).

    Args:
        table_rows: finished rows of :func:`~awch_scale.results.table.sweep_rows`.
        keys: the swept keys, one panel each.
    """
    fig, axes = grid(len(keys), size=(5, 3.8))
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
        axis_labels(ax, key, "gamma")
    return finish(fig, "gamma against each swept value (mean ± std over runs)")


def _sort_key(v):
    return (0, float(v)) if isinstance(v, int | float) else (1, str(v))


def _xval(v):
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)
