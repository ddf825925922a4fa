"""``awch-scale show`` fits a terminal: at 80 and 100 columns every line fits, no number is
cut (no ``…``), every table keeps its run and epoch columns, and every stored gamma is
printed in full; ``--provenance`` is a readable tree (no raw JSON lines), also for a store
with several target layers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import xarray as xr
from rich.console import Console
from stores import make_store
from typer.testing import CliRunner

from awch_scale.cli import app
from awch_scale.results.format import number
from awch_scale.results.summary import show_tables
from awch_scale.results.terminal import Grid, fit


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("show")
    one = make_store(folder, "tiny")
    two = make_store(folder, "two", **{"analysis.target": ["fc1", "fc2"], "runs.seeds": [0],
                                       "analysis.epochs": [3]})
    return one, two


def show(*args, columns: int):
    result = CliRunner().invoke(app, ["show", *map(str, args)], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def headers(output: str) -> list[list[str]]:
    """The header cells of every table in ``output``."""
    return [[c.strip() for c in line.strip("┃").split("┃")]
            for line in output.splitlines() if line.startswith("┃")]


@pytest.mark.parametrize("columns", [80, 100])
@pytest.mark.parametrize("which", [0, 1])
def test_show_fits_the_terminal(stores, columns, which):
    store = stores[which]
    out = show(store, columns=columns)
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= columns
    tables = headers(out)
    assert len(tables) >= 3
    labels = ["run", "epoch", *(["layer"] if which else [])]
    for head in tables:
        assert head[:len(labels)] == labels, head
    ds = xr.open_zarr(store, consolidated=False).load()
    flat = " ".join(out.split())
    shown = {c for head in tables for c in head}
    for est in ds.estimator.values:  # every estimator's column, every gamma in full
        assert str(est) in shown
        for g in np.ravel(ds.gamma.sel(estimator=est).values):
            assert number(g) in flat, (est, g)
    for se in np.ravel(ds.gamma_stderr.sel(estimator="covar").values):
        assert number(se) in flat  # (a "mean ± stderr" cell may wrap after the ±)


def test_fit_splits_columns_and_never_cuts():
    grid = Grid("t", ["run", "epoch"], [f"column_{i}" for i in range(12)])
    for r in range(3):
        grid.add([str(r), "40"], [f"{1.23456 * (i + 1):.4f} ± 0.0123" for i in range(12)])
    for width in (40, 80, 100):
        text = io.StringIO()
        console = Console(width=width, file=text)
        tables = fit(grid, width)
        for t in tables:
            console.print(t)
        out = text.getvalue()
        assert "…" not in out and max(map(len, out.splitlines())) <= width
        assert all(h[:2] == ["run", "epoch"] for h in headers(out))
        assert sum(len(h) - 2 for h in headers(out)) == 12
        for i in range(12):
            assert f"{1.23456 * (i + 1):.4f}" in out
    assert len(fit(grid, 80)) > len(fit(grid, 200)) == 1


def test_show_tables_at_any_width(stores):
    ds = xr.open_zarr(stores[0], consolidated=False).load()
    for width in (60, 80, 100, 160):
        text = io.StringIO()
        console = Console(width=width, file=text)
        for t in show_tables(ds, width):
            console.print(t)
        assert "…" not in text.getvalue()


def test_provenance_is_a_tree_for_several_layers(stores):
    out = show(stores[1], "--provenance", columns=100)
    assert "provenance of two" in out
    assert "run 0, epoch 3, layer fc1" in out and "run 0, epoch 3, layer fc2" in out
    assert "operator: KroneckerHessianOperator" in out and "versions:" in out
    assert "every analysis (2)" in out
    assert '{"' not in out  # no raw JSON
    assert max(len(line) for line in out.splitlines()) <= 100
