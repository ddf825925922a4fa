"""Queries on a store's dataset that every reader (table, summary, report) shares."""

from __future__ import annotations

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
