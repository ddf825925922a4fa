"""Every report figure drawn from a store the suite makes (spectra and suppression on), and
read back from matplotlib: each axis's range, scale, labels and legend texts, not only a
PNG. What a reader must see: the density on a log axis clipped at a floor with the top-k
eigenvalues marked; gamma over epochs as one panel per family with ticks at the stored
epochs and the legends off the [1, 2] band; equal curves said to be equal; legends at a
readable size; the power-law fit lines labelled."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import LineCollection
from stores import make_store

from awch_scale.report.figures import FIGURES
from awch_scale.report.figures.base import LEGEND_SIZE
from awch_scale.report.figures.gamma import ESTIMATOR_LABELS, FAMILY_TITLES, families
from awch_scale.report.figures.spectra import DENSITY_FLOOR
from awch_scale.variables import VARIABLES

SPECTRA = {"analysis.spectra": {"probes": 2, "steps": 8, "grid": 40},
           "analysis.suppression": {}}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    store = make_store(tmp_path_factory.mktemp("figures"), "figs", **SPECTRA)
    return xr.open_zarr(store, consolidated=False).load()


@pytest.fixture(scope="module")
def drawn(ds):
    figs = {spec.name: spec.draw(ds) for spec in FIGURES}
    for fig in figs.values():
        fig.canvas.draw()
    yield figs
    for fig in figs.values():
        plt.close(fig)


def data_axes(fig):
    """The panels that hold data (not colour bars, not hidden grid cells)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison
            and ax.get_label() != "<colorbar>" and (ax.lines or ax.images or ax.collections)]


def legends(fig):
    return [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)


def texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def test_every_figure_is_drawn(drawn):
    assert set(drawn) == {spec.name for spec in FIGURES}


@pytest.mark.parametrize("name", [spec.name for spec in FIGURES])
def test_axes_labels_ranges_and_legend_size(drawn, name):
    fig = drawn[name]
    axes = data_axes(fig)
    assert axes, name
    for ax in axes:
        assert ax.get_xlabel(), (name, ax.get_title())
        x0, x1 = sorted(ax.get_xlim())  # an image's y axis runs downwards
        y0, y1 = sorted(ax.get_ylim())
        assert np.isfinite([x0, x1, y0, y1]).all() and x0 < x1 and y0 < y1, name
        for line in ax.lines:  # every drawn point lies inside the axis range
            xy = np.asarray(line.get_xydata(), dtype=float)
            xy = xy[np.isfinite(xy).all(axis=1)]
            if ax.get_xscale() == "log":
                xy = xy[xy[:, 0] > 0]
            if ax.get_yscale() == "log":
                xy = xy[xy[:, 1] > 0]
            if len(xy) and line.get_label() and not line.get_label().startswith("_child"):
                assert x0 <= xy[:, 0].min() and xy[:, 0].max() <= x1, (name, line.get_label())
                assert y0 <= xy[:, 1].min() and xy[:, 1].max() <= y1, (name, line.get_label())
    assert any(ax.get_ylabel() for ax in axes), name
    for legend in legends(fig):
        for t in legend.get_texts():
            assert t.get_fontsize() >= LEGEND_SIZE >= 8, (name, t.get_text(), t.get_fontsize())


def test_density_log_axis_clipped_at_a_floor_with_eigenvalues_marked(drawn, ds):
    (ax,) = data_axes(drawn["density"])
    last = ds.sel(epoch=ds.epoch.values[-1])
    peak = float(last.density.max())
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "eigenvalue"
    floor, top = ax.get_ylim()
    assert floor == pytest.approx(DENSITY_FLOOR * peak, rel=1e-9) and top > peak
    for line in ax.lines:  # the broadening's tails below the floor are not drawn
        y = line.get_ydata()
        assert np.nanmin(y) >= floor
    assert texts(ax.get_legend()) == [
        "SLQ density, run 0", "SLQ density, run 1",
        "top 5 eigenvalues lambda_i, run 0", "top 5 eigenvalues lambda_i, run 1"]
    marks = [c for c in ax.collections if isinstance(c, LineCollection)]
    for run, marked in enumerate(marks):
        xs = sorted(seg[0][0] for seg in marked.get_segments())
        np.testing.assert_allclose(xs, np.sort(last.hess_eigval.values[run]))


def test_gamma_over_epochs_one_panel_per_family(drawn, ds):
    fig = drawn["gamma_epochs"]
    axes = data_axes(fig)
    names = [str(e) for e in ds.estimator.values]
    groups = families(names)
    assert [ax.get_title() for ax in axes] == list(groups)
    assert set(groups) == {FAMILY_TITLES[VARIABLES[n].stage] for n in names}
    assert list(groups) == ["empirical (gradient noise)", "activity-weight duality", "Fisher"]
    epochs = [int(e) for e in ds.epoch.values]
    for ax, members in zip(axes, groups.values(), strict=True):
        assert list(ax.get_xticks()) == epochs
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(e) for e in epochs]
        labels = texts(ax.get_legend())
        assert labels[0] == "1 <= gamma <= 2"
        assert [lab.split(" = ")[0].split(" (equal")[0] for lab in labels[1:]] == [
            ESTIMATOR_LABELS[m] for m in members]
        colours = [tuple(line.get_color()) for line in ax.lines]
        assert len(set(colours)) == len(colours), ax.get_title()
        # the legend lies below the panel: it covers none of the [1, 2] band
        assert ax.get_legend().get_window_extent().y1 <= ax.get_window_extent().y0
        lo, hi = ax.get_ylim()
        assert lo < 1 < hi
        means = ds.gamma.where(ds.done).mean("run")
        assert lo <= float(means.min()) and float(means.max()) <= hi
    # c_li = sigma_w2/(2B) h2 has h2's gamma exactly: the legend says so
    awd = texts(axes[1].get_legend())
    assert "E_p[h_p^2] (gamma_AWD) = C Thm 3.4 (equal to 1e-05)" in awd


def test_spectra_say_equal_curves_are_equal(drawn):
    """For a middle layer of a ReLU network F = H exactly: both lines show, and the legend
    says they are equal."""
    (ax,) = data_axes(drawn["spectra"])
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("rank", "eigenvalue")
    labels = texts(ax.get_legend())
    assert labels[0] == "Hessian eigenvalue lambda_i"
    assert "Fisher eigenvalue = Hessian eigenvalue lambda_i (equal to 1e-05)" in labels
    fisher = next(line for line in ax.lines if line.get_label().startswith("Fisher"))
    assert fisher.get_linestyle() == "--" and fisher.get_markerfacecolor() == "none"


def test_powerlaw_fit_lines_labelled(drawn, ds):
    fig = drawn["powerlaw"]
    last = ds.sel(epoch=ds.epoch.values[-1])
    for ax in data_axes(fig):
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert ax.get_xlabel() == "lambda_i"
        name = ax.get_ylabel().removesuffix("_ii")
        g = last.gamma.sel(estimator=name).values
        assert texts(ax.get_legend()) == [f"fit, run {r}: gamma = {g[r]:.3f}" for r in (0, 1)]
    (key,) = fig.legends
    assert texts(key) == ["run 0", "run 1", "slope 1 guide", "slope 2 guide"]


def test_other_axes(drawn, ds):
    epochs = [int(e) for e in ds.epoch.values]
    for name in ("comm_err", "eig_alignment", "spearman", "frob"):
        (ax,) = data_axes(drawn[name])
        assert list(ax.get_xticks()) == epochs and ax.get_xlabel() == "epoch", name
    (ax,) = data_axes(drawn["hp_extremes"])
    assert ax.get_yscale() == "symlog"
    (ax,) = data_axes(drawn["principal_cos"])
    assert ax.get_ylim() == (0, 1.05)
    loss, acc = data_axes(drawn["training"])
    assert loss.get_yscale() == "log" and acc.get_ylabel() == "accuracy"
    assert texts(loss.get_legend()) == ["train", "test"]
