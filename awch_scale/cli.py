"""Command line: ``awch-scale analyze RECIPE``, ``awch-scale validate RECIPE``,
``awch-scale show STORE``, ``awch-scale plot|report STORE``, ``awch-scale table STORE...``,
``awch-scale sweep RECIPE --grid KEY=V1,V2``.

Errors caused by input (recipe, data, target layer, store) are printed as one
paragraph without a traceback and exit with status 2; nothing is written.
"""

from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from .errors import AwchError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Matrix-free SGD noise covariance versus Hessian analysis (AW-CH).")
err_console = Console(stderr=True)


def _fail(exc: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _plan(recipe_path: Path, store: Path | None):
    from .pipeline import prepare
    from .recipe import load_recipe

    recipe, text = load_recipe(recipe_path)
    if store is not None:
        recipe = recipe.model_copy(update={"store": str(store)})
    return prepare(recipe, text)


EXIT_FAILURES = 3
"""``analyze`` exit status when it finished but some runs diverged or analyses failed."""
EXIT_DAMAGED = 1
"""``verify`` exit status when the store is damaged."""


def _io_error_message(exc: OSError, store: Path | None) -> str:
    """One paragraph for an I/O error while ``analyze`` writes: what, where, what to do."""
    where = exc.filename or store or "the store"
    if exc.errno == errno.ENOSPC or exc.errno == getattr(errno, "EDQUOT", None):
        what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is exceeded"
        what += f" ({exc.strerror})"
        todo = ("free space on that disk (or move the store and its checkpoint folder "
                "elsewhere and pass --store), then run the same command again to resume")
    else:
        what = exc.strerror or str(exc)
        todo = "fix the cause and run the same command again to resume"
    return (f"I/O error while writing {where}: {what}. The analyses already marked done are "
            f"intact; {todo}")


@app.command()
def analyze(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/quickstart.yaml"),
    store: Path | None = typer.Option(None, help="Store path (overrides the recipe's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    repair: bool = typer.Option(False, "--repair",
                                help="Read and checksum every chunk first; redo only the "
                                     "damaged analyses."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="torch threads (default: analysis.threads, or "
                                            "the idle cores, at most 4)."),
) -> None:
    """Train the recipe's runs and analyse every checkpoint into a zarr store (resumable).

    Exit status: 0 when every analysis is done, 3 when some runs diverged or analyses
    failed (the store says which), 2 for input, store and I/O errors, 130 on Ctrl-C.
    """
    from .pipeline import run_recipe

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    plan = None
    try:
        plan = _plan(recipe, store)
        from .distributed import set_threads

        n_threads = set_threads(threads or plan.recipe.analysis.threads)
        console = Console(stderr=True)
        console.print(f"recipe {plan.recipe.name}: store {plan.recipe.store_path}, device "
                      f"{plan.device}, D = {plan.block_sizes}, N = {plan.data.n_analysis}, "
                      f"{n_threads} thread(s)", highlight=False)
        result = run_recipe(plan, progress=not quiet and sys.stderr.isatty(),
                            echo=lambda m: console.print(m, highlight=False), repair=repair)
    except AwchError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(AwchError(_io_error_message(exc, plan.recipe.store_path if plan else None)))
    except KeyboardInterrupt:
        err_console.print("interrupted: finished analyses are in the store; run the same "
                          "command again to resume")
        raise typer.Exit(code=130) from None
    path = result.store.path
    if not result.ok:
        err_console.print(
            f"finished with failures: {result.n_done} of {result.n_analyses} analyses done; "
            f"{len(result.failures)} failure(s): "
            + "; ".join(f"{k}: {v}" for k, v in result.failures.items())[:2000]
            + f". See 'awch-scale show {path}'.", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_FAILURES)
    Console().print(f"done: {path}  (open with xarray.open_zarr(..., consolidated=False))",
                    highlight=False)


@app.command()
def verify(store: Path = typer.Argument(..., help="a store written by awch-scale analyze")
           ) -> None:
    """Read every chunk of a store and report what is damaged (exit 1) or say it is intact.

    Checks: metadata readable, every chunk's CRC-32C checksum, no chunk missing from an
    analysis marked done. ``awch-scale analyze RECIPE --repair`` redoes the damaged ones.
    """
    from .store import ResultStore

    rs = ResultStore(store)
    if not store.is_dir():
        _fail(AwchError(f"no awch-scale store at {store}"))
    damage = rs.verify(read=True)
    try:
        ds = rs.open()
        runs, epochs = ds.run.values, ds.epoch.values
    except Exception:  # noqa: BLE001  (damaged coordinates: positions instead)
        runs = epochs = None
    if not damage:
        Console().print(f"{store}: intact (every chunk read and checksummed)", highlight=False)
        return
    out = Console()
    out.print(f"{store}: {len(damage)} damaged part(s):", highlight=False)
    for d in damage:
        out.print(f"  {d.where(runs, epochs)}: {d.reason[:300]}", highlight=False, soft_wrap=True)
    out.print("repair: awch-scale analyze RECIPE --repair (redoes only the damaged analyses)",
              highlight=False)
    raise typer.Exit(code=EXIT_DAMAGED)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="YAML recipe to check"),
) -> None:
    """Check a recipe (schema, data, target layer, k, batch size) without writing anything."""
    try:
        plan = _plan(recipe, None)
    except AwchError as exc:
        _fail(exc)
    Console().print(f"recipe {plan.recipe.name} is valid: D = {plan.block_sizes}, "
                    f"N = {plan.data.n_analysis}, store {plan.recipe.store_path}",
                    highlight=False)


def _store_or_fail(store: Path):
    from .store import ResultStore

    rs = ResultStore(store)
    if not rs.exists():
        _fail(AwchError(f"no awch-scale store at {store} (expected a zarr folder with zarr.json)"))
    return rs


@app.command()
def show(
    store: Path = typer.Argument(..., help="a store written by awch-scale analyze"),
    provenance: bool = typer.Option(False, "--provenance",
                                    help="Also print how each analysis was computed."),
) -> None:
    """Print a summary table of a store (and, with --provenance, how it was computed)."""
    from .store import ResultStore
    from .summary import evidence_tables, provenance_text, summary_table

    rs = ResultStore(store)
    if not rs.exists():
        _fail(AwchError(f"no awch-scale store at {store} (expected a zarr folder with zarr.json)"))
    try:
        ds = rs.open().load()
    except Exception as exc:  # noqa: BLE001  (a damaged chunk or metadata)
        _fail(AwchError(f"store {store} cannot be read ({type(exc).__name__}: "
                        f"{str(exc)[:300]}); run 'awch-scale verify {store}'"))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(summary_table(ds))
    for table in evidence_tables(ds):
        console.print(table)
    failures = ds.attrs.get("failures") or {}
    for key, msg in failures.items():
        seed, _, epoch = key.partition("/")
        where = f"run {seed}, epoch {epoch}" if epoch else f"run {seed}"
        console.print(f"{where} failed: {msg}", highlight=False)
    if provenance:
        console.print(provenance_text(ds), highlight=False, soft_wrap=True)


@app.command()
def plot(
    store: Path = typer.Argument(..., help="a store written by awch-scale analyze"),
    out: Path | None = typer.Option(None, help="output folder (default: <store>.figures)"),
) -> None:
    """Per finished analysis, the report's power-law figure (PNG); see also ``report``."""
    from .report import save_figures

    rs = _store_or_fail(store)
    out = out or store.with_name(store.name.removesuffix(".zarr") + ".figures")
    paths = save_figures(rs.open().load(), out)
    Console().print(f"wrote {len(paths)} figure(s) to {out}", highlight=False)


@app.command()
def report(
    store: Path = typer.Argument(..., help="a store, or a sweep directory (with sweep.json)"),
    out: Path | None = typer.Option(None, help="output folder (default: <store>.report, or "
                                               "<sweep dir>/report)"),
) -> None:
    """Every figure the store supports (PNG) and one index.html: recipe, tables, figures."""
    from .report import build_report

    if not (store / "sweep.json").exists():
        _store_or_fail(store)
    try:
        index = build_report(store, out)
    except AwchError as exc:
        _fail(exc)
    Console().print(f"report: {index}", highlight=False)


@app.command()
def table(
    stores: list[Path] = typer.Argument(..., help="stores and/or sweep directories"),
    epoch: int | None = typer.Option(None, help="checkpoint epoch (default: each store's "
                                                "last)"),
    fmt: str = typer.Option("md", "--format", help="md or csv"),
) -> None:
    """gamma_emp, gamma_AWD, gamma'_AWD (mean ± std over runs), one row per store or sweep
    point, beside the paper's Table 1/3 values for recipes/table1 recipes."""
    from .table import render, rows_for

    try:
        rows, keys = rows_for(stores, epoch)
        text = render(rows, keys, fmt)
    except AwchError as exc:
        _fail(exc)
    typer.echo(text, nl=False)


@app.command()
def sweep(
    recipe: Path = typer.Argument(..., help="base YAML recipe"),
    grid: list[str] = typer.Option(..., "--grid", help="KEY=V1,V2,... (dotted recipe key); "
                                                       "repeat for a product grid"),
    scheduler: str | None = typer.Option(None, help="address of a running dask scheduler "
                                                    "(default: a LocalCluster)"),
    workers: int | None = typer.Option(None, help="LocalCluster worker processes (default: "
                                                  "one per core, at most one per point)"),
    out: Path | None = typer.Option(None, help="sweep directory (default: "
                                               "<recipe store>.sweep)"),
) -> None:
    """Run one analysis per grid point on dask.distributed, each into its own store."""
    from .recipe import load_recipe
    from .sweep import default_dir, parse_grid, run_sweep

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    console = Console(stderr=True)
    try:
        _, text = load_recipe(recipe)
        manifest = run_sweep(text, parse_grid(grid), out or default_dir(text),
                             scheduler=scheduler, workers=workers,
                             echo=lambda m: console.print(m, highlight=False, soft_wrap=True))
    except AwchError as exc:
        _fail(exc)
    failed = [p for p in manifest["points"] if p["status"] == "failed"]
    if failed:
        raise typer.Exit(code=1)


def main() -> None:  # pragma: no cover
    """Console entry point."""
    app()
