"""Queries on a store's dataset that every reader (table, summary, report) shares."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import xarray as xr


def done_mask(ds: xr.Dataset) -> xr.DataArray:
    """``done(run, epoch)`` reduced over any extra dims (False when absent)."""
    if "done" not in ds:
        return xr.zeros_like(ds.run, dtype=bool) & xr.zeros_like(ds.epoch, dtype=bool)
    d = ds["done"]
    extra = [x for x in d.dims if x not in ("run", "epoch")]
    return d.all(extra) if extra else d


def done_epochs(ds: xr.Dataset) -> np.ndarray:
    """Epochs with at least one finished analysis."""
    mask = done_mask(ds).any("run")
    return ds.epoch.values[mask.values]


def layer_views(ds: xr.Dataset) -> Iterator[tuple[str | None, xr.Dataset]]:
    """``(layer, ds at that layer)`` for each target layer of a store with several
    targets; a single ``(None, ds)`` for a store without a ``layer`` dim."""
    if "layer" in ds.dims:
        for layer in ds.layer.values:
            yield layer, ds.sel(layer=layer)
    else:
        yield None, ds


def analyses(ds: xr.Dataset) -> Iterator[tuple[object, object, bool]]:
    """``(run, epoch, finished)`` for every analysis of the store, runs outermost;
    ``finished`` is :func:`done_mask` (every layer done)."""
    done = done_mask(ds)
    for seed in ds.run.values:
        for epoch in ds.epoch.values:
            yield seed, epoch, bool(done.sel(run=seed, epoch=epoch))
