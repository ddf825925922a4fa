"""``analyze`` (one process, ``--nproc N`` or under torchrun), ``validate`` and
``verify``: the commands that run a recipe or check one."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from awch_scale.cli.common import (
    EXIT_DAMAGED,
    app,
    echo,
    fail,
    finish,
    interruptible,
    io_error,
)
from awch_scale.errors import AwchError


@app.command()
@interruptible("finished analyses are in the store; run the same command again to resume")
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
    device: str | None = typer.Option(None, "--device",
                                      help="auto, cpu, cuda or cuda:N (overrides the "
                                           "recipe's device)."),
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
            fail(AwchError(f"--nproc {nproc} cannot be combined with torchrun (WORLD_SIZE "
                            "is set): torchrun starts the processes itself; drop --nproc"))
        _analyze_torchrun(recipe, store, progress, repair, threads, device)
        return
    if nproc != 1:
        _analyze_nproc(recipe, store, progress, repair, threads, nproc, device)
        return
    plan = None
    try:
        plan = load_plan(recipe, store, device)
        from awch_scale.threads import set_threads

        n_threads = set_threads(threads or plan.recipe.analysis.threads)
        echo(f"{plan.describe()}, {n_threads} thread(s)")
        result = run_recipe(plan, progress=progress, echo=echo, repair=repair)
    except AwchError as exc:
        fail(exc)
    except OSError as exc:
        fail(io_error(exc, store=plan.recipe.store_path if plan else None))
    finish(result.as_dict())


def _analyze_nproc(recipe: Path, store: Path | None, progress: bool, repair: bool,
                   threads: int | None, nproc: int, device: str | None) -> None:
    """``analyze --nproc N`` (:func:`awch_scale.run.processes.analyze_nproc`), its
    failures as messages."""
    from awch_scale.run.processes import analyze_nproc

    try:
        summary = analyze_nproc(recipe, store, nproc, threads=threads, progress=progress,
                                repair=repair, echo=echo, device=device)
    except AwchError as exc:
        fail(exc)
    finish(summary)


def _analyze_torchrun(recipe: Path, store: Path | None, progress: bool, repair: bool,
                      threads: int | None, device: str | None) -> None:
    """One rank under torchrun (:func:`awch_scale.run.processes.analyze_torchrun`): rank 0
    prints and sets the exit status; the other ranks print only failures of their own."""
    from awch_scale.run.processes import analyze_torchrun, torchrun_rank
    from awch_scale.world import RankLost

    rank = torchrun_rank()
    try:
        summary = analyze_torchrun(recipe, store, threads=threads, progress=progress,
                                   repair=repair, device=device)
    except AwchError as exc:
        if rank == 0:
            fail(exc)
        raise typer.Exit(code=2) from None
    except OSError as exc:
        fail(io_error(exc))
    except RankLost as exc:
        fail(AwchError(f"process {rank}: {exc}. The analyses already marked done are "
                        "intact: fix the cause and run the same command again to resume"))
    if summary is not None:
        finish(summary)


@app.command()
@interruptible("nothing was written")
def verify(store: Path = typer.Argument(..., help="a store written by awch-scale analyze, "
                                                  "or a sweep directory")
           ) -> None:
    """Read every chunk of a store and report what is damaged (exit 1) or say it is intact.

    A sweep directory: every point's store is verified (sweep.json and report/ are not
    stores); exit 1 when any is damaged, or missing while marked done.

    Checks: metadata readable, the group attributes' checksums, every chunk's CRC-32C,
    no chunk missing from an analysis marked done (``analyze RECIPE --repair`` redoes
    those). A store a live ``analyze`` writes is not checked (exit 2, naming it).
    """
    from awch_scale.run.verify import verify_report

    try:
        intact, lines = verify_report(store)
    except AwchError as exc:
        fail(exc)
    for line in lines:
        Console().print(line, highlight=False, soft_wrap=True)
    if not intact:
        raise typer.Exit(code=EXIT_DAMAGED)


@app.command()
@interruptible("nothing was written")
def validate(
    recipe: Path = typer.Argument(..., help="YAML recipe to check"),
    store: Path | None = typer.Option(None, help="Store path (overrides the recipe's)."),
    device: str | None = typer.Option(None, "--device",
                                      help="auto, cpu, cuda or cuda:N (overrides the "
                                           "recipe's device)."),
) -> None:
    """Check a recipe (schema, data, target layer, k, batch size) without writing anything,
    and say what analyze would do with its store: create it, resume it (how many analyses
    it holds), find nothing left to do, or refuse it (made by a different recipe: which
    values differ)."""
    from awch_scale.run.plan import load_plan
    from awch_scale.run.resume import resume_status

    try:
        plan = load_plan(recipe, store, device)
    except AwchError as exc:
        fail(exc)
    console = Console()
    console.print(f"recipe {plan.recipe.name} is valid: D = {plan.block_sizes}, "
                  f"N = {plan.data.n_analysis}, device {plan.device}", highlight=False)
    console.print(resume_status(plan.recipe.store_path, plan.text), highlight=False,
                  soft_wrap=True)
