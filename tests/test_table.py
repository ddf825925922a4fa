"""``awch-scale table``: every printed number against the stores, the paper's column for a
Table 1 recipe, and paper.csv against the Table 1 recipe headers."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from stores import cli, make_store

from awch_scale.results.format import number, pipe_head, pipe_row, plus_minus
from awch_scale.results.table import GAMMA_COLUMNS, HEADERS, PAPER_CSV, read_paper
from awch_scale.variables import GAMMA_ROLES, VARIABLES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    a = make_store(folder, "table1_mnist_mlp_ce_c3")  # a Table 1 recipe name (tiny data)
    b = make_store(folder, "other", **{"train.lr": 0.2, "loss": "mse",
                                       "data.classes": [0, 1, 2]})
    return a, b


def expected(store: Path, epoch: int | None = None) -> dict[str, tuple[float, float]]:
    """Column -> (mean, sample std) of gamma over finished runs, straight from xarray."""
    ds = xr.open_zarr(store, consolidated=False)
    epoch = int(ds.epoch.values[-1]) if epoch is None else epoch
    out = {}
    for col, est in GAMMA_COLUMNS.items():
        g = ds.gamma.sel(epoch=epoch, estimator=est).values[ds.done.sel(epoch=epoch).values]
        out[col] = (float(np.mean(g)), float(np.std(g, ddof=1)))
    return out


def test_csv_numbers_match_the_stores(stores):
    result = cli("table", *stores, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["recipe"] for r in rows] == ["table1_mnist_mlp_ce_c3", "other"]
    for row, store in zip(rows, stores, strict=True):
        for col, (mean, std) in expected(store).items():
            assert float(row[f"{col}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(row[f"{col}_std"]) == pytest.approx(std, rel=1e-12)
        assert row["runs"] == "2" and row["epoch"] == "3"
    assert (rows[0]["loss"], rows[0]["C"], rows[0]["model"]) == ("CE", "2", "MLP")
    assert (rows[1]["loss"], rows[1]["C"]) == ("MSE", "3")
    # the paper's values join by recipe name; the other recipe has none
    assert float(rows[0]["paper_gamma_emp"]) == 1.22 and float(rows[0]["paper_gamma_awd"]) == 1.24
    assert rows[0]["paper_gamma_awd_prime"] == "" and rows[1]["paper_gamma_emp"] == ""


def test_markdown_numbers_match_the_stores(stores):
    result = cli("table", *stores, "--epoch", "1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines()
             if line.startswith("| ") and not line.startswith("| ---")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[-3:] == ["paper gamma_emp", "paper gamma_AWD", "paper gamma'_AWD"]
    for line, store in zip(lines[1:], stores, strict=True):
        cells = dict(zip(head, [c.strip() for c in line.strip("|").split("|")], strict=True))
        assert cells["epoch"] == "1"
        for col, (mean, std) in expected(store, epoch=1).items():
            name = {"gamma_emp": "gamma_emp", "gamma_awd": "gamma_AWD",
                    "gamma_awd_prime": "gamma'_AWD"}[col]
            m, s = map(float, re.fullmatch(r"(-?[\d.]+) ± ([\d.]+)", cells[name]).groups())
            assert abs(m - mean) <= 5e-4 and abs(s - std) <= 5e-4, (name, cells[name])
    first = dict(zip(head, [c.strip() for c in lines[1].strip("|").split("|")], strict=True))
    assert first["paper gamma_emp"] == "1.22 ± 0.01"
    assert first["paper gamma_AWD"] == "1.24 ± 0.01"


def test_unknown_epoch_is_an_input_error(stores):
    result = cli("table", stores[0], "--epoch", "7")
    assert result.exit_code == 2
    assert "has no epoch 7; its epochs are [1, 3]" in " ".join(result.output.split())


def test_paper_csv_matches_the_table1_recipe_headers():
    paper = read_paper(PAPER_CSV)
    files = sorted((ROOT / "recipes" / "table1").glob("*.yaml"))
    assert len(paper) == len(files) == 24
    for path in files:
        text = path.read_text()
        name = yaml.safe_load(text)["name"]
        p = paper[name]
        assert (f"gamma_emp = {p['gamma_emp']:.2f} +/- {p['gamma_emp_std']:.2f}, "
                f"gamma_AWD = {p['gamma_awd']:.2f} +/- {p['gamma_awd_std']:.2f}") in text
        if "_mse_" in name:
            assert (f"gamma'_AWD = {p['gamma_awd_prime']:.2f} +/- "
                    f"{p['gamma_awd_prime_std']:.2f}") in text
        else:
            assert np.isnan(p["gamma_awd_prime"])


def test_gamma_columns_are_the_registry_roles():
    """The table's columns, headers and estimators are read from the variable registry's
    roles, in the paper's order, and name the columns of paper.csv."""
    assert GAMMA_ROLES == {"gamma_emp": "covar", "gamma_AWD": "h2", "gamma'_AWD": "c_awd_raw"}
    assert list(GAMMA_ROLES) == ["gamma_emp", "gamma_AWD", "gamma'_AWD"]
    assert GAMMA_COLUMNS == {"gamma_emp": "covar", "gamma_awd": "h2",
                             "gamma_awd_prime": "c_awd_raw"}
    assert list(GAMMA_COLUMNS) == list(HEADERS) == ["gamma_emp", "gamma_awd", "gamma_awd_prime"]
    assert list(HEADERS.values()) == ["gamma_emp", "gamma_AWD", "gamma'_AWD"]
    for col, est in GAMMA_COLUMNS.items():
        assert VARIABLES[est].role == HEADERS[col] and VARIABLES[est].gamma
    header = next(line for line in PAPER_CSV.read_text().splitlines()
                  if not line.startswith("#")).split(",")
    assert {c for col in GAMMA_COLUMNS for c in (col, f"{col}_std")} <= set(header)


def test_one_number_format():
    """A finite value with its spec, '-' for None, NaN and infinities (numpy and 0-d too)."""
    assert number(1.23456) == "1.235" and number(np.float32(0.5), ".2f") == "0.50"
    assert number(xr.DataArray(2.0), ".4g") == "2" and number(np.array(3.0)) == "3.000"
    assert [number(v) for v in (None, np.nan, np.inf, -np.inf)] == ["-"] * 4
    assert plus_minus(1.0, 0.25) == "1.000 ± 0.250"
    assert plus_minus(1.0, 0.25, ".2f") == "1.00 ± 0.25"
    assert plus_minus(1.0, np.nan) == plus_minus(1.0, None) == "1.000"
    assert plus_minus(np.nan, 0.1) == plus_minus(None, 0.1) == "-"
    assert pipe_head(["a", "b"]) == ["| a | b |", "| --- | --- |"]
    assert pipe_row(["1", "-"]) == "| 1 | - |"


def test_estimators_choose_the_gamma_columns(stores):
    result = cli("table", *stores, "--format", "csv", "--estimators", "covar,fisher,c_hh")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    gammas = [c for c in rows[0] if c.startswith("gamma")]
    assert gammas == ["gamma_emp_mean", "gamma_emp_std", "gamma_fisher_mean",
                      "gamma_fisher_std", "gamma_c_hh_mean", "gamma_c_hh_std"]
    assert "paper_gamma_emp" in rows[0] and "paper_gamma_awd" not in rows[0]
    for row, store in zip(rows, stores, strict=True):
        ds = xr.open_zarr(store, consolidated=False)
        for col, est in (("gamma_fisher", "fisher"), ("gamma_c_hh", "c_hh")):
            g = ds.gamma.sel(epoch=3, estimator=est).values
            assert float(row[f"{col}_mean"]) == pytest.approx(np.mean(g), rel=1e-12)
            assert float(row[f"{col}_std"]) == pytest.approx(np.std(g, ddof=1), rel=1e-12)
    md = cli("table", *stores, "--estimators", "h2,fisher")
    head = [c.strip() for c in md.output.splitlines()[0].strip("|").split("|")]
    assert head[-3:] == ["gamma_AWD", "gamma(fisher)", "paper gamma_AWD"]


def test_unknown_estimator_is_an_input_error(stores):
    result = cli("table", stores[0], "--estimators", "covar,hessian")
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "unknown estimator(s) hessian; allowed: covar, covar_mb, covar_within" in flat
    assert "fisher" in flat and "Traceback" not in result.output
