"""``awch-scale report A.zarr B.zarr ...``: one report that compares stores: gamma over
epochs and the power law overlaid (one colour per store, e.g. CE against MSE as in the
paper's Fig. 2), the table of every store, and each store's recipe."""

from __future__ import annotations

from pathlib import Path

from awch_scale.report.figures import Skip
from awch_scale.report.figures.compare import draw_compare_gamma, draw_compare_powerlaw
from awch_scale.report.files import open_store, save
from awch_scale.report.html import Section, write_index
from awch_scale.results.queries import layer_views, select

COMPARE_FIGURES = (
    ("compare_gamma", draw_compare_gamma,
     "gamma_emp, gamma_AWD, gamma'_AWD over training, one colour per store (Fig. 4a)"),
    ("compare_powerlaw", draw_compare_powerlaw,
     "X_ii against lambda_i at each store's last epoch, one colour per store, its mean "
     "gamma's line (Fig. 2: CE against MSE)"),
)
"""The overlaid figures: (file stem, ``draw(series)``, caption)."""


def series_labels(stores: list[Path], names: list[str]) -> list[str]:
    """One label per store: its recipe name, or, where two stores share it, its folder
    name."""
    return [name if names.count(name) == 1 else Path(store).name
            for store, name in zip(stores, names, strict=True)]


def default_out(stores: list[Path]) -> Path:
    """``<folder of the first>/<stem>_vs_<stem>....report``."""
    stems = [Path(s).name.removesuffix(".zarr") for s in stores]
    return Path(stores[0]).parent / ("_vs_".join(stems) + ".report")


def build_comparison(stores, out=None, *, fmt: str = "png", runs=None, epochs=None) -> Path:
    """Write one report comparing ``stores`` and return its ``index.html``.

    Args:
        stores: two or more stores written by ``awch-scale analyze``.
        out: output folder (default: :func:`default_out`).
        fmt: figure file format (png, svg, pdf).
        runs: the runs (seeds) to draw from every store (default: all).
        epochs: the epochs to draw from every store (default: all).
    """
    from awch_scale.results.table import render, store_rows

    stores = [Path(s) for s in stores]
    out = Path(out) if out else default_out(stores)
    data = [select(open_store(s), runs, epochs, source=f"store {s}") for s in stores]
    labels = series_labels(stores, [str(ds.attrs.get("recipe_name", s.name))
                                    for s, ds in zip(stores, data, strict=True)])
    series = [(label if layer is None else f"{label} ({layer})", view)
              for label, ds in zip(labels, data, strict=True)
              for layer, view in layer_views(ds)]
    out.mkdir(parents=True, exist_ok=True)
    drawn, skipped = [], []
    for stem, draw, caption in COMPARE_FIGURES:
        try:
            path = save(draw(series), out / f"{stem}.{fmt}")
        except Skip as exc:
            skipped.append(f"{stem}: {exc}")
        else:
            drawn.append(Section(stem, path.name, caption))
    rows = [row for s, ds in zip(stores, data, strict=True)
            for row in store_rows(s, int(ds.epoch.values[-1]), runs=runs)]
    recipes = "\n\n".join(f"# ---- {label}: {s}\n{ds.attrs.get('recipe', '')}"
                          for label, s, ds in zip(labels, stores, data, strict=True))
    return write_index(out, title=f"awch-scale comparison: {', '.join(labels)}",
                       source=", ".join(map(str, stores)), recipe=recipes,
                       tables=[("gamma at each store's last epoch (mean ± std over runs)",
                                render(rows))],
                       figures=drawn, skipped=skipped)
