"""What every command shares: the typer app, one-paragraph errors (exit 2), interruption
by a signal, how ``analyze`` ends, and checks of the stores and folders a command reads or
writes."""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.console import Console

from awch_scale.errors import AwchError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Matrix-free SGD noise covariance versus Hessian analysis (AW-CH).")
err_console = Console(stderr=True)


def fail(exc: BaseException) -> None:
    """Print ``exc`` as one paragraph on stderr (no traceback) and exit with status 2."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


EXIT_FAILURES = 3
"""``analyze`` exit status when it finished but some runs diverged or analyses failed."""
EXIT_DAMAGED = 1
"""``verify`` exit status when the store is damaged."""


def io_error(exc: OSError, store=None, **words) -> AwchError:
    """:func:`~awch_scale.run.failures.io_error_message` as an AwchError."""
    from awch_scale.run.failures import io_error_message

    return AwchError(io_error_message(exc, store, **words))


def interruptible(then: str):
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


def finish(summary: dict) -> None:
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


def echo(message: str) -> None:
    """A progress line of ``analyze`` (stderr)."""
    Console(stderr=True).print(message, highlight=False)



def output_folder(out: Path, option: str = "--out", default: str | None = None) -> Path:
    """``out`` if it can be a writable folder outside any store (not created here: the
    command creates it once its input is found good); else exit 2 naming the option
    (:func:`awch_scale.report.files.output_folder_error`,
    :func:`awch_scale.run.outputs.refuse_inside_store`; ``default``: suggested instead)."""
    from awch_scale.report.files import output_folder_error
    from awch_scale.run.outputs import refuse_inside_store

    try:  # first: the writability probe below would create a file inside a store
        refuse_inside_store(out, option, default)
    except AwchError as exc:
        fail(exc)
    error = output_folder_error(out, option)
    if error is not None:
        fail(error)
    return out


def open_or_fail(rs, store: Path):
    """The store's Dataset, loaded; a damaged store is a message naming ``verify``."""
    try:
        return rs.open().load()
    except Exception as exc:  # noqa: BLE001  (a damaged chunk or metadata)
        fail(AwchError(f"store {store} cannot be read ({type(exc).__name__}: "
                        f"{str(exc)[:300]}); run 'awch-scale verify {store}'"))


def lacks(store: Path, exc: BaseException) -> AwchError:
    """The error for a store that lacks a variable the command reads."""
    return AwchError(f"store {store} lacks a variable it should have ({type(exc).__name__}: "
                     f"{str(exc)[:200]}); run 'awch-scale verify {store}' and 'awch-scale "
                     "analyze RECIPE' to redo its analyses")


def written_or_fail(write, out: Path, store: Path):
    """Run ``write()``; an I/O error (full disk, permissions) is a one-paragraph message."""
    try:
        return write()
    except (KeyError, AttributeError) as exc:  # a store that lacks a variable
        fail(lacks(store, exc))
    except AwchError as exc:  # a figure format, run or epoch the store does not have
        fail(exc)
    except OSError as exc:
        fail(AwchError(f"I/O error while writing {exc.filename or out}: "
                        f"{exc.strerror or exc}; fix the cause and run the command again"))


def store_or_fail(store: Path):
    """The store at ``store`` for the reading commands (:meth:`ResultStore.for_reading`);
    else exit 2 with its one paragraph."""
    from awch_scale.results.manifest import is_sweep_dir
    from awch_scale.results.store import ResultStore

    if is_sweep_dir(store):
        fail(AwchError(f"{store} is a sweep directory (sweep.json: one store per point), not a "
                       f"store: 'awch-scale table {store}' tabulates its points and "
                       f"'awch-scale report {store}' draws them; or name one point's store, "
                       f"{store}/<point>.zarr"))
    try:
        return ResultStore.for_reading(store)
    except AwchError as exc:
        fail(exc)
