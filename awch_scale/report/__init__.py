"""``awch-scale report``: every figure of the paper a store can support, as PNGs beside
one ``index.html`` that needs no network (recipe text, summary table, figures, and the
list of figures skipped because their variables are not in the store).

``awch-scale plot`` is the per-analysis subset (:func:`save_figures`): the same drawing
code, once per finished (run, epoch).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import xarray as xr

from awch_scale.report.figures import FIGURES, FigureSpec, Skip, draw_sweep, missing
from awch_scale.report.html import Section, write_index
from awch_scale.results.manifest import is_sweep_dir
from awch_scale.results.queries import done_mask
from awch_scale.results.store import sibling
from awch_scale.run.outputs import written_beside

__all__ = ["FIGURES", "FigureSpec", "build_report", "save_figures", "build_sweep_report"]


def _open(path: str | Path) -> xr.Dataset:
    from awch_scale.results.store import ResultStore

    return ResultStore.for_reading(path, check_arrays=False).open().load()


def _save(fig: plt.Figure, path: Path, dpi: int = 100) -> Path:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _layers(ds: xr.Dataset):
    if "layer" in ds.dims:
        for layer in ds.layer.values:
            yield f"_{layer}", f" (layer {layer})", ds.sel(layer=layer)
    else:
        yield "", "", ds


def _first_layer(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(layer=0) if "layer" in ds.dims else ds


def draw_all(ds: xr.Dataset, out: Path, figures=FIGURES) -> tuple[list[Section], list[str]]:
    """Draw every figure ``ds`` supports into ``out``.

    Returns:
        (drawn figures as :class:`Section`, one-line notes for the skipped ones).
    """
    out.mkdir(parents=True, exist_ok=True)
    drawn, skipped = [], []
    for spec in figures:
        # one figure per target layer, unless none of its variables has a layer dim
        per_layer = any("layer" in ds[n].dims for n in spec.requires if n in ds)
        views = _layers(ds) if per_layer else [("", "", _first_layer(ds))]
        for suffix, tag, one in views:
            why = missing(one, spec)
            if why is None:
                try:
                    path = _save(spec.draw(one), out / f"{spec.name}{suffix}.png")
                except Skip as exc:
                    why = str(exc)
                else:
                    drawn.append(Section(spec.name + suffix, path.name,
                                         f"{spec.caption}{tag} ({spec.paper})"))
                    continue
            skipped.append(f"{spec.name}{suffix} ({spec.paper}): {why}")
    return drawn, skipped


def build_report(store: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of one store (or a sweep directory) and return its ``index.html``.

    Args:
        store: a store written by ``awch-scale analyze``, or a sweep directory.
        out: output folder (default: ``<store>.report`` beside the store).
    """
    store = Path(store)
    if is_sweep_dir(store):
        return build_sweep_report(store, out)
    from awch_scale.results.table import render, store_rows

    out = Path(out) if out else sibling(store, ".report")
    ds = _open(store)
    with written_beside(out) as tmp:  # complete, or not there: renamed into place
        drawn, skipped = draw_all(ds, tmp)
        summary = render(store_rows(store))
        write_index(tmp, title=f"awch-scale report: {ds.attrs.get('recipe_name', store)}",
                    source=str(store), recipe=ds.attrs.get("recipe", ""),
                    tables=[("gamma at the last epoch (mean ± std over runs)", summary),
                            ("per run and epoch", _per_analysis(ds))],
                    figures=drawn, skipped=skipped)
    return out / "index.html"


def build_sweep_report(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Report of a sweep directory: gamma against each swept value, and the table."""
    from awch_scale.results.manifest import read_manifest
    from awch_scale.results.table import render, sweep_rows

    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir / "report"
    manifest = read_manifest(sweep_dir)
    rows, keys = sweep_rows(sweep_dir)
    done = [r for r in rows if r.get("status") == "done"]
    drawn, skipped = [], []
    with written_beside(out) as tmp:  # complete, or not there: renamed into place
        if done:
            _save(draw_sweep(done, keys), tmp / "sweep_gamma.png")
            drawn.append(Section("sweep_gamma", "sweep_gamma.png",
                                 "gamma_emp, gamma_AWD, gamma'_AWD against each swept value "
                                 "(reference Fig. 5-6)"))
        else:
            skipped.append("sweep_gamma: no finished point")
        for r in rows:
            if r.get("status") != "done":
                point = ", ".join(f"{k}={r[k]}" for k in keys)
                skipped.append(f"point {point}: {r.get('status')}: {r.get('reason', '')}")
        write_index(tmp, title=f"awch-scale sweep: {manifest.get('recipe_name', '')}",
                    source=str(sweep_dir), recipe=manifest.get("recipe", ""),
                    tables=[("one row per point", render(rows, keys))],
                    figures=drawn, skipped=skipped)
    return out / "index.html"


def _per_analysis(ds: xr.Dataset) -> str:
    """Markdown table: per run and epoch, accuracies, lambda_1, gammas, done."""
    from awch_scale.results.table import GAMMA_COLUMNS, HEADERS

    ests = [e for e in GAMMA_COLUMNS.values()
            if "estimator" in ds.coords and e in [str(x) for x in ds.estimator.values]]
    head = ["run", "epoch", "train acc", "test acc", "lambda_1",
            *[HEADERS[c] for c, e in GAMMA_COLUMNS.items() if e in ests], "done"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    done = done_mask(ds)
    for _, tag, one in _layers(ds):
        for seed in one.run.values:
            for epoch in one.epoch.values:
                sel = one.sel(run=seed, epoch=epoch)
                ok = bool(done.sel(run=seed, epoch=epoch))
                cells = [f"{seed}{tag}", str(epoch), _f(sel.get("train_acc")),
                         _f(sel.get("test_acc"))]
                cells.append(_f(sel.hess_eigval.isel(eig=0), ".4g")
                             if ok and "hess_eigval" in sel else "-")
                for e in ests:
                    cells.append(_f(sel.gamma.sel(estimator=e)) if ok else "-")
                cells.append("yes" if ok else "no")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _f(v, spec=".3f") -> str:
    if v is None:
        return "-"
    x = float(v)
    return "-" if x != x else format(x, spec)


def save_figures(ds: xr.Dataset, out: Path) -> list[Path]:
    """``awch-scale plot``: the per-analysis figures of the report (the power law), once
    per finished (run, epoch[, layer]), named ``<figure>_run<seed>_epoch<e>[_<layer>].png``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    done = done_mask(ds)
    for suffix, _, lay in _layers(ds):
        for seed in ds.run.values:
            for epoch in ds.epoch.values:
                if not bool(done.sel(run=seed, epoch=epoch)):
                    continue
                one = lay.sel(run=[seed], epoch=[epoch])
                for spec in FIGURES:
                    if spec.per_analysis and missing(one, spec) is None:
                        name = f"{spec.name}_run{seed}_epoch{epoch}{suffix}.png"
                        paths.append(_save(spec.draw(one), out / name, dpi=110))
    return paths
