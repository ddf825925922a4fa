"""The result store: one zarr group per recipe, opened with ``xarray.open_zarr``.

Layout (SPEC section 8): dims ``run`` (coordinate: seed) and ``epoch`` (coordinate:
checkpoint epoch) lead every per-analysis variable, e.g. ``covar(run, epoch, eig,
eig_)``; training curves are ``train_loss(run, epoch)`` etc. at the checkpoints and
``curve_train_loss(run, train_epoch)`` for every epoch; ``done(run, epoch)`` marks
finished analyses.

Crash safety. Every per-analysis array is chunked (1, 1, ...) along (run, epoch), and
zarr writes each chunk file atomically, so writing one analysis touches only that
analysis's chunks. ``done`` is written last, in a call of its own. A crash therefore
leaves at most one unfinished analysis whose ``done`` is still false; a rerun redoes
exactly that one. Array metadata is written once, when a variable first appears.
"""

from __future__ import annotations

import datetime as _dt
import platform
import warnings
from importlib import metadata
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from .errors import AwchError
from .variables import annotate, stored_dtype

_PACKAGES = ("awch-scale", "torch", "numpy", "scipy", "xarray", "zarr", "backpack-for-pytorch")


def package_versions() -> dict[str, str]:
    """Versions of the packages that produce the numbers."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _fill(dtype: np.dtype):
    if np.issubdtype(dtype, np.floating):
        return np.nan
    if np.issubdtype(dtype, np.bool_):
        return False
    if dtype == np.dtype(object):
        return ""
    return -1


PARAM_CHUNK = 1 << 16
"""Chunk length along ``param`` (``hess_eigvec``): a chunk holds at most 65,536 x k values."""


def _chunks(var: xr.DataArray) -> tuple[int, ...]:
    return tuple(min(n, PARAM_CHUNK) if d == "param" else n
                 for d, n in zip(var.dims, var.shape, strict=True))


def _strings(ds: xr.Dataset) -> xr.Dataset:
    """String coordinates as variable-length strings (zarr 3's stable string type)."""
    for name, coord in ds.coords.items():
        if coord.dtype.kind == "U":
            ds = ds.assign_coords({name: coord.values.astype(object)})
    return ds


class ResultStore:
    """Read and write the store of one recipe.

    Args:
        path: folder of the zarr store.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- creation ---------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / "zarr.json").exists()

    def create(self, *, seeds: list[int], epochs: list[int], n_train_epochs: int,
               attrs: dict) -> None:
        """Create the store with its bookkeeping and training-curve arrays."""
        runs, eps = len(seeds), len(epochs)
        per_run = {
            "done": (("run", "epoch"), np.zeros((runs, eps), bool)),
            "ckpt_epoch": (("run", "epoch"), np.full((runs, eps), -1, np.int64)),
            "trained": ("run", np.zeros(runs, bool)),
            "failed": ("run", np.zeros(runs, bool)),
        }
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm"):
            per_run[name] = (("run", "epoch"), np.full((runs, eps), np.nan, np.float32))
            per_run[f"curve_{name}"] = (("run", "train_epoch"),
                                       np.full((runs, n_train_epochs + 1), np.nan, np.float32))
        per_run["curve_lr"] = (("run", "train_epoch"),
                               np.full((runs, n_train_epochs + 1), np.nan, np.float32))
        ds = xr.Dataset(per_run, coords={"run": seeds, "epoch": epochs,
                                         "train_epoch": np.arange(n_train_epochs + 1)})
        ds.attrs.update(attrs)
        ds.attrs.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat())
        ds = annotate(ds).chunk({"run": 1, "epoch": 1})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ds.to_zarr(self.path, mode="w-", consolidated=False)

    # -- reading ----------------------------------------------------------------------
    def open(self) -> xr.Dataset:
        """The store as a lazy dataset (``xarray.open_zarr``, no consolidated metadata)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            return xr.open_zarr(self.path, consolidated=False)

    @property
    def attrs(self) -> dict:
        return dict(self.open().attrs)

    def done(self) -> np.ndarray:
        return self.open()["done"].values

    def trained(self) -> np.ndarray:
        return self.open()["trained"].values

    # -- writing ----------------------------------------------------------------------
    def _region(self, ds: xr.Dataset, region: dict) -> None:
        ds = ds.drop_vars([c for c in ds.coords], errors="ignore")
        ds.to_zarr(self.path, region=region, consolidated=False)

    def _add_variables(self, ds: xr.Dataset) -> None:
        """Create arrays (metadata only) for variables of ``ds`` that the store lacks."""
        current = self.open()
        new = [v for v in ds.data_vars if v not in current.data_vars]
        if not new:
            return
        shape = (current.sizes["run"], current.sizes["epoch"])
        tmpl = {}
        for name in new:
            var = ds[name]
            dtype = stored_dtype(name, var.dtype)
            full = shape + var.shape
            values = (np.full(full, _fill(dtype), dtype=dtype) if dtype == np.dtype(object)
                      else da.full(full, _fill(dtype), dtype=dtype, chunks=(1, 1, *_chunks(var))))
            tmpl[name] = (("run", "epoch", *var.dims), values, var.attrs)
        coords = {c: ds.coords[c] for c in ds.coords if c not in current.coords}
        out = _strings(xr.Dataset(tmpl, coords={"run": current.run, "epoch": current.epoch,
                                                **coords}))
        for name in new:  # numpy-backed (string) templates: one chunk per (run, epoch) too
            if not isinstance(out[name].data, da.Array):
                out[name].encoding["chunks"] = (1, 1, *_chunks(ds[name]))
        out.attrs.update(current.attrs)  # an append rewrites the group's attributes
        out.to_zarr(self.path, mode="a", compute=False, consolidated=False)

    def write_analysis(self, run: int, epoch: int, ds: xr.Dataset) -> None:
        """Write one analysis (no run/epoch dims) into slot (run, epoch), then mark done.

        Args:
            run: position along ``run`` (not the seed).
            epoch: position along ``epoch`` (not the epoch number).
            ds: the dataset from :func:`awch_scale.analyze_checkpoint`; its numeric
                attributes that vary per analysis should already be variables.
        """
        ds = _strings(ds)
        self._check_coords(ds)
        self._add_variables(ds)
        ds = xr.Dataset({n: v.astype(stored_dtype(n, v.dtype)) for n, v in ds.data_vars.items()})
        region = {"run": slice(run, run + 1), "epoch": slice(epoch, epoch + 1)}
        self._region(ds.expand_dims(run=1, epoch=1), region)
        self._region(xr.Dataset({"done": (("run", "epoch"), np.ones((1, 1), bool))}), region)

    def _check_coords(self, ds: xr.Dataset) -> None:
        current = self.open()
        for name in ds.coords:
            if name in current.coords and not np.array_equal(current[name].values,
                                                             ds[name].values):
                raise AwchError(
                    f"store {self.path} has coordinate '{name}' = {current[name].values}, "
                    f"but this analysis produced {ds[name].values}; the store was made by a "
                    "different configuration"
                )

    def write_training(self, run: int, history: dict[str, np.ndarray],
                       at_checkpoints: dict[str, np.ndarray], ckpt_epoch: np.ndarray,
                       failed: bool) -> None:
        """Write one run's training curves and checkpoint metrics, then mark it trained."""
        n = self.open().sizes["train_epoch"]
        curves = {}
        for name, values in history.items():
            full = np.full(n, np.nan, np.float32)
            full[: min(n, len(values))] = np.asarray(values, np.float32)[:n]
            curves[f"curve_{name}"] = (("run", "train_epoch"), full[None])
        self._region(xr.Dataset(curves), {"run": slice(run, run + 1)})
        per_epoch = {name: (("run", "epoch"), np.asarray(v, np.float32)[None])
                     for name, v in at_checkpoints.items()}
        per_epoch["ckpt_epoch"] = (("run", "epoch"), np.asarray(ckpt_epoch, np.int64)[None])
        self._region(xr.Dataset(per_epoch), {"run": slice(run, run + 1)})
        flags = {"failed": ("run", np.array([failed])), "trained": ("run", np.array([True]))}
        self._region(xr.Dataset(flags), {"run": slice(run, run + 1)})
