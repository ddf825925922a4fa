"""Command line: ``awch-scale analyze RECIPE``, ``awch-scale validate RECIPE``,
``awch-scale show STORE``, ``awch-scale plot|report STORE``, ``awch-scale table STORE...``,
``awch-scale sweep RECIPE --grid KEY=V1,V2``.

Errors caused by input (recipe, data, target layer, store) are printed as one
paragraph without a traceback and exit with status 2; nothing is written.

``analyze --nproc N`` (or ``torchrun --nproc-per-node N awch-scale analyze RECIPE``)
shares every analysis among N processes (:mod:`awch_scale.run.processes`; rank 0 trains
and writes, see :mod:`awch_scale.run.ranks`); ``--nproc 1``, the default, is the
one-process path with no communication at all.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from awch_scale.errors import AwchError
from awch_scale.results.format import paragraphs

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Matrix-free SGD noise covariance versus Hessian analysis (AW-CH).")
err_console = Console(stderr=True)


def _fail(exc: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


EXIT_FAILURES = 3
"""``analyze`` exit status when it finished but some runs diverged or analyses failed."""
EXIT_DAMAGED = 1
"""``verify`` exit status when the store is damaged."""


def _io_error(exc: OSError, store=None, **words) -> AwchError:
    """:func:`~awch_scale.run.failures.io_error_message` as an AwchError."""
    from awch_scale.run.failures import io_error_message

    return AwchError(io_error_message(exc, store, **words))


def _interruptible(then: str):
    """Run the command with SIGINT, SIGTERM and SIGHUP handled alike
    (:mod:`awch_scale.run.signals`): the first one ends it with ``interrupted (SIG...):
    <then>`` and exit status 128 + the signal's number (130, 143, 129)."""

    def wrap(command):
        @functools.wraps(command)
        def run(*args, **kwargs):
            from awch_scale.run.signals import exit_status, handled_signals, signal_name, signal_of

            with handled_signals():
                try:
                    return command(*args, **kwargs)
                except KeyboardInterrupt as exc:
                    err_console.print(f"interrupted ({signal_name(signal_of(exc))}): {then}",
                                      highlight=False, soft_wrap=True)
                    raise typer.Exit(code=exit_status(exc)) from None
        return run
    return wrap


def _finish(summary: dict) -> None:
    """Print how ``analyze`` ended (``summary``: :meth:`RunSummary.as_dict`); exit 3 when
    analyses failed or runs diverged."""
    path, failures = summary["store"], summary["failures"]
    if not summary["ok"]:
        err_console.print(
            f"finished with failures: {summary['n_done']} of {summary['n_analyses']} "
            f"analyses done; {len(failures)} failure(s): "
            + "; ".join(f"{k}: {v}" for k, v in failures.items())[:2000]
            + f". See 'awch-scale show {path}'.", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_FAILURES)
    Console().print(f"done: {path}  (open with xarray.open_zarr(..., consolidated=False))",
                    highlight=False)


def _echo(message: str) -> None:
    """A progress line of ``analyze`` (stderr)."""
    Console(stderr=True).print(message, highlight=False)


@app.command()
@_interruptible("finished analyses are in the store; run the same command again to resume")
def analyze(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/quickstart.yaml"),
    store: Path | None = typer.Option(None, help="Store path (overrides the recipe's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    repair: bool = typer.Option(False, "--repair",
                                help="Read and checksum every chunk first; redo only the "
                                     "damaged analyses."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="torch threads (default: analysis.threads, or "
                                            "the idle cores, at most 4; with --nproc, per "
                                            "process: the idle cores divided among them)."),
    nproc: int = typer.Option(1, "--nproc",
                              help="processes sharing each analysis (torch.distributed: "
                                   "gloo on CPU, nccl on GPU, one GPU each); rank 0 trains "
                                   "and writes. 1: one process, no communication."),
) -> None:
    """Train the recipe's runs and analyse every checkpoint into a zarr store (resumable).

    Exit status: 0 when every analysis is done, 3 when some runs diverged or analyses
    failed (the store says which), 2 for input, store and I/O errors (and, with
    ``--nproc``, when one process failed or was lost: the others are stopped), 130 on
    Ctrl-C, 143 on SIGTERM, 129 on SIGHUP (the lock is released; resumable).
    """
    from awch_scale.run.plan import load_plan
    from awch_scale.run.processes import torchrun_size
    from awch_scale.run.runner import run_recipe

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    progress = not quiet and sys.stderr.isatty()
    if torchrun_size() > 1:
        if nproc != 1:
            _fail(AwchError(f"--nproc {nproc} cannot be combined with torchrun (WORLD_SIZE "
                            "is set): torchrun starts the processes itself; drop --nproc"))
        _analyze_torchrun(recipe, store, progress, repair, threads)
        return
    if nproc != 1:
        _analyze_nproc(recipe, store, progress, repair, threads, nproc)
        return
    plan = None
    try:
        plan = load_plan(recipe, store)
        from awch_scale.threads import set_threads

        n_threads = set_threads(threads or plan.recipe.analysis.threads)
        _echo(f"{plan.describe()}, {n_threads} thread(s)")
        result = run_recipe(plan, progress=progress, echo=_echo, repair=repair)
    except AwchError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(_io_error(exc, store=plan.recipe.store_path if plan else None))
    _finish(result.as_dict())


def _analyze_nproc(recipe: Path, store: Path | None, progress: bool, repair: bool,
                   threads: int | None, nproc: int) -> None:
    """``analyze --nproc N`` (:func:`awch_scale.run.processes.analyze_nproc`), its
    failures as messages."""
    from awch_scale.run.processes import analyze_nproc

    try:
        summary = analyze_nproc(recipe, store, nproc, threads=threads, progress=progress,
                                repair=repair, echo=_echo)
    except AwchError as exc:
        _fail(exc)
    _finish(summary)


def _analyze_torchrun(recipe: Path, store: Path | None, progress: bool, repair: bool,
                      threads: int | None) -> None:
    """One rank under torchrun (:func:`awch_scale.run.processes.analyze_torchrun`): rank 0
    prints and sets the exit status; the other ranks print only failures of their own."""
    from awch_scale.run.processes import analyze_torchrun, torchrun_rank
    from awch_scale.world import RankLost

    rank = torchrun_rank()
    try:
        summary = analyze_torchrun(recipe, store, threads=threads, progress=progress,
                                   repair=repair)
    except AwchError as exc:
        if rank == 0:
            _fail(exc)
        raise typer.Exit(code=2) from None
    except OSError as exc:
        _fail(_io_error(exc))
    except RankLost as exc:
        _fail(AwchError(f"process {rank}: {exc}. The analyses already marked done are "
                        "intact: fix the cause and run the same command again to resume"))
    if summary is not None:
        _finish(summary)


@app.command()
@_interruptible("nothing was written")
def verify(store: Path = typer.Argument(..., help="a store written by awch-scale analyze")
           ) -> None:
    """Read every chunk of a store and report what is damaged (exit 1) or say it is intact.

    Checks: metadata readable, the group attributes' checksums, every chunk's CRC-32C,
    no chunk missing from an analysis marked done (``analyze RECIPE --repair`` redoes
    those). A store a live ``analyze`` writes is not checked (exit 2, naming it).
    """
    from awch_scale.run.verify import verify_report

    try:
        intact, lines = verify_report(store)
    except AwchError as exc:
        _fail(exc)
    for line in lines:
        Console().print(line, highlight=False, soft_wrap=True)
    if not intact:
        raise typer.Exit(code=EXIT_DAMAGED)


@app.command()
@_interruptible("nothing was written")
def validate(
    recipe: Path = typer.Argument(..., help="YAML recipe to check"),
) -> None:
    """Check a recipe (schema, data, target layer, k, batch size) without writing anything."""
    from awch_scale.run.plan import load_plan

    try:
        plan = load_plan(recipe)
    except AwchError as exc:
        _fail(exc)
    Console().print(f"recipe {plan.recipe.name} is valid: D = {plan.block_sizes}, "
                    f"N = {plan.data.n_analysis}, store {plan.recipe.store_path}",
                    highlight=False)


def _output_folder(out: Path, option: str = "--out", default: str | None = None) -> Path:
    """``out`` if it can be a writable folder outside any store (not created here: the
    command creates it once its input is found good); else exit 2 naming the option
    (:func:`awch_scale.report.files.output_folder_error`,
    :func:`awch_scale.run.outputs.refuse_inside_store`; ``default``: suggested instead)."""
    from awch_scale.report.files import output_folder_error
    from awch_scale.run.outputs import refuse_inside_store

    try:  # first: the writability probe below would create a file inside a store
        refuse_inside_store(out, option, default)
    except AwchError as exc:
        _fail(exc)
    error = output_folder_error(out, option)
    if error is not None:
        _fail(error)
    return out


def _open_or_fail(rs, store: Path):
    """The store's Dataset, loaded; a damaged store is a message naming ``verify``."""
    try:
        return rs.open().load()
    except Exception as exc:  # noqa: BLE001  (a damaged chunk or metadata)
        _fail(AwchError(f"store {store} cannot be read ({type(exc).__name__}: "
                        f"{str(exc)[:300]}); run 'awch-scale verify {store}'"))


def _lacks(store: Path, exc: BaseException) -> AwchError:
    """The error for a store that lacks a variable the command reads."""
    return AwchError(f"store {store} lacks a variable it should have ({type(exc).__name__}: "
                     f"{str(exc)[:200]}); run 'awch-scale verify {store}' and 'awch-scale "
                     "analyze RECIPE' to redo its analyses")


def _written_or_fail(write, out: Path, store: Path):
    """Run ``write()``; an I/O error (full disk, permissions) is a one-paragraph message."""
    try:
        return write()
    except (KeyError, AttributeError) as exc:  # a store that lacks a variable
        _fail(_lacks(store, exc))
    except AwchError as exc:  # a figure format, run or epoch the store does not have
        _fail(exc)
    except OSError as exc:
        _fail(AwchError(f"I/O error while writing {exc.filename or out}: "
                        f"{exc.strerror or exc}; fix the cause and run the command again"))


def _store_or_fail(store: Path):
    """The store at ``store`` for the reading commands (:meth:`ResultStore.for_reading`);
    else exit 2 with its one paragraph."""
    from awch_scale.results.store import ResultStore

    try:
        return ResultStore.for_reading(store)
    except AwchError as exc:
        _fail(exc)


@app.command()
@_interruptible("nothing was written")
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

    ds = _open_or_fail(_store_or_fail(store), store)
    terminal = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
    console = Console(width=None if terminal else 160)
    try:
        tables = show_tables(ds, console.width)
    except (KeyError, AttributeError) as exc:  # a store of an older version, damaged
        _fail(_lacks(store, exc))
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
@_interruptible("no figures written (the output folder is as it was)")
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

    rs = _store_or_fail(store)
    default = sibling(store, ".figures")
    out = _output_folder(out or default, default=str(default))
    ds = _open_or_fail(rs, store)

    def write():
        with written_beside(out) as tmp:
            return save_figures(ds, tmp, fmt, runs=runs, epochs=epochs)

    paths = _written_or_fail(write, out, store)
    Console().print(f"wrote {len(paths)} figure(s) to {out}", highlight=False)


@app.command()
@_interruptible("no report written (the output folder is as it was)")
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
            _store_or_fail(store)
    if out is not None:
        _output_folder(out)
    index = _written_or_fail(lambda: build_report(stores, out, fmt=fmt, runs=runs,
                                                  epochs=epochs), out or stores[0], stores[0])
    Console().print(f"report: {index}", highlight=False)


@app.command()
@_interruptible("nothing was written")
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
            _store_or_fail(path)
    try:
        columns = gamma_columns(estimators)
        rows, keys = rows_for(stores, epoch, columns)
        text = render(rows, keys, fmt, columns)
    except AwchError as exc:
        _fail(exc)
    typer.echo(text, nl=False)


@app.command()
@_interruptible("the finished points are in their stores; run the same command again to "
                "resume (finished points are skipped)")
def sweep(
    recipe: Path = typer.Argument(..., help="base YAML recipe"),
    grid: list[str] = typer.Option(..., "--grid", help="KEY=V1,V2,... (dotted recipe key); "
                                                       "repeat for a product grid"),
    scheduler: str | None = typer.Option(None, help="address of a running dask scheduler "
                                                    "(default: a LocalCluster)"),
    workers: int | None = typer.Option(None, min=1, help="LocalCluster worker processes "
                                       "(default: one per core, at most one per point)"),
    out: Path | None = typer.Option(None, help="sweep directory (default: "
                                               "<recipe store>.sweep)"),
) -> None:
    """Run one analysis per grid point on dask.distributed, each into its own store.

    Exit status: 0 when every point is done, 1 when some point failed or is being written
    by another process (listed), 2 for a bad recipe, grid, ``--out``, ``--workers`` or
    unreachable ``--scheduler`` (nothing written) and for I/O errors, 130/143/129 when
    interrupted (resumable).
    """
    from awch_scale.run.recipe import load_recipe
    from awch_scale.run.sweep import default_dir, parse_grid, run_sweep

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    console = Console(stderr=True)
    if out is not None:
        _output_folder(out)
    try:
        _, text = load_recipe(recipe)
        folder = out or _output_folder(default_dir(text))
        manifest = run_sweep(text, parse_grid(grid), folder,
                             scheduler=scheduler, workers=workers,
                             echo=lambda m: console.print(m, highlight=False, soft_wrap=True))
    except AwchError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(_io_error(exc, out, kept="The points already done are intact in their "
                        "stores", move=" (or pass another --out)"))
    if any(p["status"] != "done" for p in manifest["points"]):
        raise typer.Exit(code=1)


for _command in app.registered_commands:  # help paragraphs unbroken: the terminal wraps them
    _command.help = paragraphs(_command.help or _command.callback.__doc__)


def main() -> None:  # pragma: no cover
    """Console entry point."""
    app()
