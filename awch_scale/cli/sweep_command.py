"""``sweep``: a grid of recipe overrides on dask.distributed, each point its own store."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from awch_scale.cli.common import (
    app,
    fail,
    interruptible,
    io_error,
    output_folder,
)
from awch_scale.errors import AwchError


@app.command()
@interruptible("the finished points are in their stores; run the same command again to "
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
    from awch_scale.run.grid import parse_grid
    from awch_scale.run.recipe import load_recipe
    from awch_scale.run.sweep import default_dir, run_sweep

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    console = Console(stderr=True)
    if out is not None:
        output_folder(out)
    try:
        _, text = load_recipe(recipe)
        folder = out or output_folder(default_dir(text))
        manifest = run_sweep(text, parse_grid(grid), folder,
                             scheduler=scheduler, workers=workers,
                             echo=lambda m: console.print(m, highlight=False, soft_wrap=True))
    except AwchError as exc:
        fail(exc)
    except OSError as exc:
        fail(io_error(exc, out, kept="The points already done are intact in their "
                        "stores", move=" (or pass another --out)"))
    if any(p["status"] != "done" for p in manifest["points"]):
        raise typer.Exit(code=1)
