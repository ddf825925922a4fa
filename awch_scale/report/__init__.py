"""``awch-scale report``: every figure of the paper a store can support, as PNG, SVG or PDF
files beside one ``index.html`` that needs no network (recipe text, summary table,
figures, and the list of figures skipped because their variables are not in the store).
Runs and epochs can be selected; several stores make one comparison report
(:mod:`awch_scale.report.compare`).

``awch-scale plot`` is the per-analysis subset (:func:`save_figures`): the same drawing
code, once per finished (run, epoch).
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from awch_scale.report.figures import FIGURES, FigureSpec, Skip, draw_sweep, missing
from awch_scale.report.files import FORMATS, check_format, open_store, save
from awch_scale.report.html import Section, write_index
from awch_scale.results.format import number, pipe_head, pipe_row
from awch_scale.results.manifest import is_sweep_dir
from awch_scale.results.queries import analyses, layer_views, select
from awch_scale.results.store import sibling
from awch_scale.run.outputs import written_beside
from awch_scale.variables import GAMMA_ROLES

__all__ = ["FIGURES", "FORMATS", "FigureSpec", "build_report", "save_figures",
           "build_sweep_report", "check_format"]


def _layers(ds: xr.Dataset):
    """(file-name suffix, caption tag, view) for each target layer (one, untagged, without
    a layer dim)."""
    for layer, view in layer_views(ds):
        yield ("", "", view) if layer is None else (f"_{layer}", f" (layer {layer})", view)


def _first_layer(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(layer=0) if "layer" in ds.dims else ds


def draw_all(ds: xr.Dataset, out: Path, figures=FIGURES, fmt: str = "png"
             ) -> tuple[list[Section], list[str]]:
    """Draw every figure ``ds`` supports into ``out`` as ``fmt`` files.

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
                    path = save(spec.draw(one), out / f"{spec.name}{suffix}.{fmt}")
                except Skip as exc:
                    why = str(exc)
                else:
                    drawn.append(Section(spec.name + suffix, path.name,
                                         f"{spec.caption}{tag} ({spec.paper})"))
                    continue
            skipped.append(f"{spec.name}{suffix} ({spec.paper}): {why}")
    return drawn, skipped


def build_report(store: str | Path | list, out: str | Path | None = None, *,
                 fmt: str = "png", runs=None, epochs=None) -> Path:
    """Write the report of one store (or a sweep directory) and return its ``index.html``;
    several stores make one comparison report (:func:`~awch_scale.report.compare.build_comparison`).

    Args:
        store: a store written by ``awch-scale analyze``, a sweep directory, or a list of
            stores.
        out: output folder (default: ``<store>.report`` beside the store).
        fmt: figure file format, one of :data:`FORMATS`.
        runs: the runs (seeds) to draw (default: all).
        epochs: the epochs to draw (default: all).
    """
    check_format(fmt)
    if isinstance(store, list | tuple):
        if len(store) > 1 and any(is_sweep_dir(s) for s in store):
            from awch_scale.errors import AwchError

            raise AwchError("a sweep directory is reported on its own: 'awch-scale report "
                            "SWEEP_DIR' (use 'awch-scale table' to put sweeps side by side)")
        if len(store) > 1:
            from awch_scale.report.compare import build_comparison, default_out

            out = Path(out) if out else default_out([Path(s) for s in store])
            with written_beside(out) as tmp:  # complete, or not there: renamed into place
                build_comparison(store, tmp, fmt=fmt, runs=runs, epochs=epochs)
            return out / "index.html"
        store = store[0]
    store = Path(store)
    if is_sweep_dir(store):
        return build_sweep_report(store, out, fmt=fmt)
    from awch_scale.results.table import render, store_rows

    out = Path(out) if out else sibling(store, ".report")
    ds = select(open_store(store), runs, epochs, source=f"store {store}")
    with written_beside(out) as tmp:  # complete, or not there: renamed into place
        drawn, skipped = draw_all(ds, tmp, fmt=fmt)
        summary = render(store_rows(store, int(ds.epoch.values[-1]), runs=runs))
        write_index(tmp, title=f"awch-scale report: {ds.attrs.get('recipe_name', store)}",
                    source=str(store), recipe=ds.attrs.get("recipe", ""),
                    tables=[("gamma at the last epoch (mean ± std over runs)", summary),
                            ("per run and epoch", _per_analysis(ds))],
                    figures=drawn, skipped=skipped)
    return out / "index.html"


def build_sweep_report(sweep_dir: str | Path, out: str | Path | None = None,
                       fmt: str = "png") -> Path:
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
            save(draw_sweep(done, keys), tmp / f"sweep_gamma.{fmt}")
            drawn.append(Section("sweep_gamma", f"sweep_gamma.{fmt}",
                                 f"{', '.join(GAMMA_ROLES)} against each swept value "
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
    stored = [str(x) for x in ds.estimator.values] if "estimator" in ds.coords else []
    shown = {role: est for role, est in GAMMA_ROLES.items() if est in stored}
    head = ["run", "epoch", "train acc", "test acc", "lambda_1", *shown, "done"]
    lines = pipe_head(head)
    for _, tag, one in _layers(ds):
        for seed, epoch, ok in analyses(ds):
            sel = one.sel(run=seed, epoch=epoch)
            cells = [f"{seed}{tag}", str(epoch), number(sel.get("train_acc")),
                     number(sel.get("test_acc"))]
            cells.append(number(sel.hess_eigval.isel(eig=0), ".4g")
                         if ok and "hess_eigval" in sel else "-")
            for e in shown.values():
                cells.append(number(sel.gamma.sel(estimator=e)) if ok else "-")
            cells.append("yes" if ok else "no")
            lines.append(pipe_row(cells))
    return "\n".join(lines) + "\n"


def save_figures(ds: xr.Dataset, out: Path, fmt: str = "png", *, runs=None,
                 epochs=None) -> list[Path]:
    """``awch-scale plot``: the per-analysis figures of the report (the power law), once
    per finished (run, epoch[, layer]) of the ``runs`` and ``epochs`` given (default: all;
    :func:`~awch_scale.results.queries.select`), named
    ``<figure>_run<seed>_epoch<e>[_<layer>].<fmt>``."""
    check_format(fmt)
    ds = select(ds, runs, epochs)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, _, lay in _layers(ds):
        for seed, epoch, ok in analyses(ds):
            if not ok:
                continue
            one = lay.sel(run=[seed], epoch=[epoch])
            for spec in FIGURES:
                if spec.per_analysis and missing(one, spec) is None:
                    name = f"{spec.name}_run{seed}_epoch{epoch}{suffix}.{fmt}"
                    paths.append(save(spec.draw(one), out / name, dpi=110))
    return paths
