"""Queries on a store's dataset that every reader (table, summary, report) shares."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import xarray as xr

from awch_scale.errors import AwchError


def done_mask(ds: xr.Dataset) -> xr.DataArray:
    """``done(run, epoch)`` reduced over any extra dims (False when absent)."""
    if "done" not in ds:
        return xr.zeros_like(ds.run, dtype=bool) & xr.zeros_like(ds.epoch, dtype=bool)
    d = ds["done"]
    extra = [x for x in d.dims if x not in ("run", "epoch")]
    return d.all(extra) if extra else d


def completion(ds: xr.Dataset) -> tuple[int, int, bool]:
    """(analyses done, analyses in all, whether every analysis is done or belongs to a
    run that diverged in training (``failed``): nothing is left to run)."""
    done = ds["done"].values
    failed = ds["failed"].values.reshape(-1, *([1] * (done.ndim - 1)))
    return int(done.sum()), int(done.size), bool((done | failed).all())


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


def integers(value, option: str) -> list[int] | None:
    """``"0,1"`` (or a list) as integers; None stays None.

    Raises:
        AwchError: a value that is no integer; the message names ``option``.
    """
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return [int(v) for v in items if str(v).strip()]
    except ValueError:
        raise AwchError(f"{option} {value}: give integers separated by commas, e.g. "
                        f"{option} 0,1") from None


def select(ds: xr.Dataset, runs=None, epochs=None, *, source: object = "the store"
           ) -> xr.Dataset:
    """``ds`` restricted to the runs (seeds) and epochs given (lists of integers or
    comma-separated text such as ``"0,1"``; None: all), in the store's order.

    Raises:
        AwchError: a value that is no integer, or a run or epoch the store does not have;
            the message lists the ones it has.
    """
    for dim, wanted in (("run", integers(runs, "--runs")),
                        ("epoch", integers(epochs, "--epochs"))):
        if wanted is None:
            continue
        have = [int(v) for v in ds[dim].values]
        unknown = [v for v in wanted if v not in have]
        if unknown or not wanted:
            raise AwchError(f"{source} has no {dim} {', '.join(map(str, unknown)) or '(none)'}"
                            f"; its {dim}s are {', '.join(map(str, have))}")
        ds = ds.sel({dim: [v for v in have if v in wanted]})
    return ds
