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


@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_report_and_plot_formats(store, tmp_path, fmt, magic):
    out = tmp_path / "rep"
    result = cli("report", store, "--out", out, "--format", fmt)
    assert result.exit_code == 0, result.output
    html = (out / "index.html").read_text()
    for name in EXPECTED_NOW:
        assert (out / f"{name}.{fmt}").read_bytes()[:len(magic)] == magic, name
        ref = f"<img src='{name}.svg'" if fmt == "svg" else f"<object data='{name}.pdf'"
        assert ref in html, name
    assert not list(out.glob("*.png"))
    figs = tmp_path / "figs"
    result = cli("plot", store, "--out", figs, "--format", fmt, "--runs", "1", "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert [p.name for p in figs.iterdir()] == [f"powerlaw_run1_epoch3.{fmt}"]


def test_unknown_format_run_or_epoch_is_an_input_error(store, tmp_path):
    for args, needle in ((["--format", "jpg"], "figure format 'jpg' is not known; allowed: "
                                               "png, svg, pdf"),
                         (["--runs", "0,7"], "has no run 7; its runs are 0, 1"),
                         (["--epochs", "2"], "has no epoch 2; its epochs are 1, 3"),
                         (["--runs", "x"], "--runs x: give integers")):
        for command in ("report", "plot"):
            out = tmp_path / f"{command}{len(args[1])}"
            result = cli(command, store, "--out", out, *args)
            assert result.exit_code == 2, (command, args, result.output)
            assert needle in " ".join(result.output.split()), (command, result.output)
            assert "Traceback" not in result.output
            assert not out.exists() or not list(out.iterdir()), (command, args)


def test_report_selects_runs_and_epochs(store, tmp_path):
    index = build_report(store, tmp_path / "rep", runs=[1], epochs=[3])
    html = index.read_text()
    per_run = html.split("per run and epoch")[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", per_run)
    assert rows == [("1", "3")]
    summary = html.split("gamma at the last epoch")[1].split("</table>")[0]
    assert "<td>1</td>" in summary  # one run in the summary (the runs column)
    import matplotlib.pyplot as plt

    from awch_scale.report.figures.gamma import draw_gamma_epochs
    from awch_scale.results.queries import select

    ds = select(xr.open_zarr(store, consolidated=False).load(), "1", "3")
    fig = draw_gamma_epochs(ds)
    assert [list(ax.get_xticks()) for ax in fig.axes] == [[3]] * len(fig.axes)
    plt.close(fig)


def test_report_overlays_several_stores(store, tmp_path):
    """``report A B``: one report, gamma over epochs and the power law overlaid, one
    colour per store, CE against MSE (as the paper's Fig. 2)."""
    import matplotlib.pyplot as plt

    from awch_scale.report.figures.compare import draw_compare_gamma, draw_compare_powerlaw

    mse = make_store(tmp_path, "mse", loss="mse", **{"train.lr": 0.2})
    out = tmp_path / "cmp"
    result = cli("report", store, mse, "--out", out)
    assert result.exit_code == 0, result.output
    html = check_report(out / "index.html", {"compare_gamma", "compare_powerlaw"})
    assert "awch-scale comparison: tiny, mse" in html
    assert "<td>tiny</td>" in html and "<td>mse</td>" in html  # the table of both
    assert "# ---- tiny:" in html and "# ---- mse:" in html  # both recipes
    series = [("tiny", xr.open_zarr(store, consolidated=False).load()),
              ("mse", xr.open_zarr(mse, consolidated=False).load())]
    fig = draw_compare_gamma(series)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["C (gamma_emp)", "E_p[h_p^2] (gamma_AWD)", "C^AWD (gamma'_AWD)"]
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["1 <= gamma <= 2", "tiny", "mse"]
        assert list(ax.get_xticks()) == [1, 3]
    plt.close(fig)
    fig = draw_compare_powerlaw(series)
    for ax, est in zip(fig.axes, ["covar", "h2", "c_awd_raw"], strict=True):
        assert ax.get_xscale() == ax.get_yscale() == "log"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        for (name, ds), label in zip(series, labels, strict=True):
            g = ds.gamma.sel(epoch=3, estimator=est).values
            assert label == f"{name}: gamma = {g.mean():.3f} ± {np.std(g, ddof=1):.3f}"
    plt.close(fig)
    same = cli("report", store, store, "--out", tmp_path / "same")
    assert same.exit_code == 0 and "tiny.zarr, tiny.zarr" in (
        tmp_path / "same" / "index.html").read_text()
