"""Curves over training: train/test loss and accuracy per epoch (Fig. 4e), a scalar
statistic per analysis over epochs (Fig. 4b-d), and the Frobenius norms of the AWD terms
(Fig. 4f)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from awch_scale.report.figures.base import (
    axis_labels,
    band,
    epoch_ticks,
    finish,
    long_name,
    over_epochs,
    single,
)


def scalar_epochs(names: tuple[str, ...], title: str, ylabel: str, logy=False):
    """A ``draw(ds)`` of the scalar variables ``names`` over epochs (those in the store),
    one band each, labelled with their registry ``long_name``."""
    def draw(ds: xr.Dataset) -> plt.Figure:
        fig, ax = single()
        epochs = []
        for name in names:
            if name in ds:
                epochs, y = over_epochs(ds, name)
                band(ax, epochs, y, label=long_name(name))
        epoch_ticks(ax, epochs)
        if logy:
            ax.set_yscale("log")
        axis_labels(ax, "epoch", ylabel)
        return finish(fig, title)
    return draw


def draw_training(ds: xr.Dataset) -> plt.Figure:
    """Train/test loss and accuracy over epochs."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = ds.train_epoch.values
    for ax, kind in ((a1, "loss"), (a2, "acc")):
        for split in ("train", "test"):
            name = f"curve_{split}_{kind}"
            if name in ds:
                y = ds[name].transpose("run", "train_epoch").values
                band(ax, x, y, label=split, marker="")
        axis_labels(ax, "epoch", "loss" if kind == "loss" else "accuracy")
    a1.set_yscale("log")
    return finish(fig, "training curves (analysis set = train, test set)")


def draw_frob(ds: xr.Dataset) -> plt.Figure:
    """Frobenius norms of the AWD terms over epochs (Fig. 4f)."""
    fig, ax = single()
    labelled = "term" in ds.frob.coords
    terms = ds.frob.coords["term"].values if labelled else np.arange(ds.sizes["term"])
    for i, term in enumerate(terms):
        epochs, y = over_epochs(ds, "frob", **({"term": term} if labelled else {}))
        if not labelled:
            y = y[..., i]
        band(ax, epochs, y, label=str(term))
    epoch_ticks(ax, epochs)
    ax.set_yscale("log")
    axis_labels(ax, "epoch", "||X||_F", ncol=2)
    return finish(fig, "Frobenius norms of the AWD terms over training")
