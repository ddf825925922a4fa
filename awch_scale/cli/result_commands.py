"""``show``, ``plot``, ``report`` and ``table``: the commands that read stores."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from awch_scale.cli.common import (
    app,
    fail,
    interruptible,
    lacks,
    open_or_fail,
    output_folder,
    store_or_fail,
    written_or_fail,
)
from awch_scale.errors import AwchError


@app.command()
@interruptible("nothing was written")
def show(
    store: Path = typer.Argument(..., help="a store written by awch-scale analyze"),
    provenance: bool = typer.Option(False, "--provenance",
                                    help="Also print how each analysis was computed."),
) -> None:
    """Print a summary table of a store (and, with --provenance, how it was computed).

    Tables fit the terminal (COLUMNS; 160 when not a terminal): columns that do not fit go
    to a further table that repeats the run and epoch columns; no number is cut.
    """
    import os

    from awch_scale.results.summary import provenance_tree, show_tables

    ds = open_or_fail(store_or_fail(store), store)
    terminal = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
    console = Console(width=None if terminal else 160)
    try:
        tables = show_tables(ds, console.width)
    except (KeyError, AttributeError) as exc:  # a store of an older version, damaged
        fail(lacks(store, exc))
    for table in tables:
        console.print(table)
    failures = ds.attrs.get("failures") or {}
    for key, msg in failures.items():
        seed, _, epoch = key.partition("/")
        where = f"run {seed}, epoch {epoch}" if epoch else f"run {seed}"
        console.print(f"{where} failed: {msg}", highlight=False)
    if provenance:
        console.print(provenance_tree(ds), highlight=False)


@app.command()
@interruptible("no figures written (the output folder is as it was)")
def plot(
    store: Path = typer.Argument(..., help="a store written by awch-scale analyze"),
    out: Path | None = typer.Option(None, help="output folder (default: <store>.figures)"),
    fmt: str = typer.Option("png", "--format", help="png, svg or pdf"),
    runs: str | None = typer.Option(None, help="runs to draw, e.g. 0,1 (default: all)"),
    epochs: str | None = typer.Option(None, help="epochs to draw, e.g. 20,40 (default: all)"),
) -> None:
    """Per finished analysis, the report's power-law figure; see also 'report'."""
    from awch_scale.report import save_figures
    from awch_scale.results.store import sibling
    from awch_scale.run.outputs import written_beside

    rs = store_or_fail(store)
    default = sibling(store, ".figures")
    out = output_folder(out or default, default=str(default))
    ds = open_or_fail(rs, store)

    def write():
        with written_beside(out) as tmp:
            return save_figures(ds, tmp, fmt, runs=runs, epochs=epochs)

    paths = written_or_fail(write, out, store)
    Console().print(f"wrote {len(paths)} figure(s) to {out}", highlight=False)


@app.command()
@interruptible("no report written (the output folder is as it was)")
def report(
    stores: list[Path] = typer.Argument(..., help="a store, a sweep directory (with "
                                                  "sweep.json), or several stores to compare"),
    out: Path | None = typer.Option(None, help="output folder (default: <store>.report, "
                                               "<sweep dir>/report, <A>_vs_<B>.report)"),
    fmt: str = typer.Option("png", "--format", help="png, svg or pdf"),
    runs: str | None = typer.Option(None, help="runs to draw, e.g. 0,1 (default: all)"),
    epochs: str | None = typer.Option(None, help="epochs to draw, e.g. 20,40 (default: all)"),
) -> None:
    """Every figure the store supports and one index.html: recipe, tables, figures.

    Several stores make one report that overlays them (gamma over epochs and the power
    law, one colour per store, e.g. CE against MSE) beside the table of every store. The
    report is built in a temporary folder beside ``--out`` and moved into place when it
    is complete: an interrupted report leaves no partial folder.
    """
    from awch_scale.report import build_report
    from awch_scale.results.manifest import is_sweep_dir

    for store in stores:
        if not is_sweep_dir(store):
            store_or_fail(store)
    if out is not None:
        output_folder(out)
    index = written_or_fail(lambda: build_report(stores, out, fmt=fmt, runs=runs,
                                                  epochs=epochs), out or stores[0], stores[0])
    Console().print(f"report: {index}", highlight=False)


@app.command()
@interruptible("nothing was written")
def table(
    stores: list[Path] = typer.Argument(..., help="stores and/or sweep directories"),
    epoch: int | None = typer.Option(None, help="checkpoint epoch (default: each store's "
                                                "last)"),
    fmt: str = typer.Option("md", "--format", help="md or csv"),
    estimators: str | None = typer.Option(None, help="gamma columns, e.g. covar,h2,fisher "
                                                     "(default: covar,h2,c_awd_raw)"),
) -> None:
    """gamma_emp, gamma_AWD, gamma'_AWD (mean ± std over runs), one row per store or sweep
    point, beside the paper's Table 1/3 values for recipes/table1 recipes."""
    from awch_scale.results.manifest import is_sweep_dir
    from awch_scale.results.table import gamma_columns, render, rows_for

    for path in stores:
        if not is_sweep_dir(path):
            store_or_fail(path)
    try:
        columns = gamma_columns(estimators)
        rows, keys = rows_for(stores, epoch, columns)
        text = render(rows, keys, fmt, columns)
    except AwchError as exc:
        fail(exc)
    typer.echo(text, nl=False)
