"""``awch-scale report`` and ``plot``: every expected figure is a valid PNG referenced from
index.html; figures whose variables are missing are listed as skipped; with every
registered variable present (synthetic values) every figure is drawn. The numbers the
figures show (Haar baseline, |R|) are checked against dense numpy."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import xarray as xr
from scipy.stats import ortho_group
from stores import cli, make_store, with_synthetic

from awch_scale.analysis.statistics import correlation, haar_rotated
from awch_scale.report import FIGURES, build_report
from awch_scale.report.figures import missing
from awch_scale.report.figures.gamma import ESTIMATOR_LABELS
from awch_scale.results.queries import analyses, layer_views
from awch_scale.variables import GAMMA_ESTIMATORS

# The figures a store of today's stages (eigen, covariance, AWD, training) supports.
EXPECTED_NOW = {"corr", "powerlaw", "gamma_epochs", "training", "comm_err", "frob",
                "eig_alignment", "spearman"}
"""Figures of the suite's store (statistics on; spectra and suppression switched off in
tests/stores.py, so their figures are skipped)."""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("report"))


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; asserts the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_report(index, names):
    html = index.read_text()
    refs = set(re.findall(r"<img src='([^']+)'", html))
    assert refs == {f"{n}.png" for n in names}
    for n in names:
        png = index.parent / f"{n}.png"
        w, h = png_size(png)
        assert w >= 300 and h >= 250, (n, w, h)
        assert png.stat().st_size > 10_000, n  # drawn, not an empty canvas
    return html


def test_report_on_analyzed_store(store, tmp_path):
    out = tmp_path / "rep"
    result = cli("report", store, "--out", out)
    assert result.exit_code == 0, result.output
    html = check_report(out / "index.html", EXPECTED_NOW)
    assert "name: tiny" in html  # the recipe text
    assert "gamma_emp" in html and "gamma_AWD" in html  # the summary tables
    skipped = re.findall(r"<li>([^<]+)</li>", html)
    assert {s.split(" ")[0] for s in skipped} == {f.name for f in FIGURES} - EXPECTED_NOW
    assert any(s.startswith("density") and "needs density (not in this store)" in s
               for s in skipped), skipped
    assert all("not in this store" in s for s in skipped)


def test_report_draws_every_figure_from_registered_variables(store, tmp_path):
    full = tmp_path / "full.zarr"
    added = with_synthetic(store, full)
    assert {"supp_h1", "density", "mode_cumfrac", "m_eigval"} <= set(added)
    index = build_report(full, tmp_path / "rep")
    html = check_report(index, {f.name for f in FIGURES})
    assert "Skipped" not in html


def test_variable_never_computed_is_skipped(store, tmp_path):
    ds = xr.open_zarr(store, consolidated=False).load()
    ds["comm_err"] = (("run", "epoch"), np.full((2, 2), np.nan))
    spec = next(f for f in FIGURES if f.name == "comm_err")
    assert missing(ds, spec) == "comm_err has no finished value in this store"
    assert missing(ds.drop_vars("comm_err"), spec) == "needs comm_err (not in this store)"


def test_haar_baseline_and_abs_corr_against_dense():
    """The figure's baseline and |R| are statistics.haar_rotated and statistics.correlation."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 8))
    c = a @ a.T
    w = np.linalg.eigvalsh(c)
    rot = haar_rotated(w, np.random.default_rng(7))
    # same spectrum, symmetric, rotated by the seeded Haar draw
    np.testing.assert_allclose(np.linalg.eigvalsh(rot), w, rtol=1e-10)
    q = ortho_group.rvs(8, random_state=np.random.default_rng(7))
    np.testing.assert_allclose(rot, q @ np.diag(w) @ q.T, atol=1e-10)
    r = np.abs(correlation(c))
    dense = np.array([[abs(c[i, j]) / np.sqrt(c[i, i] * c[j, j]) for j in range(8)]
                      for i in range(8)])
    np.testing.assert_allclose(r, dense, rtol=1e-12)
    np.testing.assert_allclose(haar_rotated(w, np.random.default_rng(7)), rot, rtol=1e-14)
    c0 = c.copy()
    c0[0, :] = c0[:, 0] = 0.0  # a zero diagonal entry: R is 0 there, not NaN
    assert np.all(correlation(c0)[0] == 0) and np.isfinite(correlation(c0)).all()


def test_plot_is_the_per_analysis_subset(store, tmp_path):
    result = cli("plot", store, "--out", tmp_path / "figs")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "figs").glob("*.png"))
    assert names == [f"powerlaw_run{r}_epoch{e}.png" for r in (0, 1) for e in (1, 3)]
    assert cli("report", tmp_path / "nope.zarr").exit_code == 2


def test_several_target_layers(tmp_path):
    store = make_store(tmp_path, "two", **{"analysis.target": ["fc1", "fc2"],
                                           "runs.seeds": [0], "analysis.epochs": [3]})
    index = build_report(store, tmp_path / "rep")
    per_layer = {f"{n}_{layer}" for n in ("corr", "powerlaw", "gamma_epochs", "comm_err",
                                          "frob", "eig_alignment", "spearman")
                 for layer in ("fc1", "fc2")}
    check_report(index, per_layer | {"training"})  # curves have no layer dim: drawn once


def test_estimator_labels_name_the_registry_roles():
    assert set(ESTIMATOR_LABELS) == set(GAMMA_ESTIMATORS)
    assert ESTIMATOR_LABELS["covar"] == "C (gamma_emp)"
    assert ESTIMATOR_LABELS["h2"] == "E_p[h_p^2] (gamma_AWD)"
    assert ESTIMATOR_LABELS["c_awd_raw"] == "C^AWD (gamma'_AWD)"
    assert ESTIMATOR_LABELS["fisher"] == "Fisher"


def test_layer_views_and_analyses():
    done = xr.DataArray([[[True, True], [True, False]], [[False, False], [True, True]]],
                        dims=("run", "epoch", "layer"),
                        coords={"run": [0, 1], "epoch": [1, 3], "layer": ["fc1", "fc2"]})
    ds = xr.Dataset({"done": done})
    views = list(layer_views(ds))
    assert [layer for layer, _ in views] == ["fc1", "fc2"]
    assert views[1][1].done.values.tolist() == [[True, False], [False, True]]
    # finished means every layer finished; runs outermost
    assert [(int(r), int(e), ok) for r, e, ok in analyses(ds)] == [
        (0, 1, True), (0, 3, False), (1, 1, False), (1, 3, True)]
    flat = ds.isel(layer=0, drop=True)
    assert [(layer, v is flat) for layer, v in layer_views(flat)] == [(None, True)]
